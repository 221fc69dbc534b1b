"""Ray Serve's per-request overhead over the plain server: the same app, same settings, one replica.

    python benchmarks/serve_overhead.py [--requests 200] [--clients 16]

Starts `python -m service` and a local Ray Serve deployment (one replica) side by side and sends, to each,
sequential requests (one at a time: latency) and closed-loop concurrent requests (throughput, where
batching amortises the proxy hop). Writes benchmarks/results/serve_overhead.json. `local_serve()` is also
what `benchmarks/load.py --serve-replicas N` uses.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import print_table, write_results
from model.data import load_mnist
from model.images import encode_png


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout}s")


@contextmanager
def plain_server(settings: dict[str, Any]) -> Iterator[str]:
    """`python -m service` on a free local port with `settings` as command-line options."""
    port = _free_port()
    cmd = [sys.executable, "-m", "service", "--port", str(port), "--log-level", "warning"]
    for key, value in settings.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    proc = subprocess.Popen(cmd, cwd=ROOT)
    try:
        _wait_ready(f"http://127.0.0.1:{port}")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(60)


@contextmanager
def local_serve(settings: dict[str, Any], replicas: int = 1, cpus: int = 2) -> Iterator[str]:
    """A local Ray instance with the service deployed as `replicas` Serve replicas on 127.0.0.1."""
    os.environ.update({"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"})
    import ray
    from ray import serve

    from service.ray_serve import PROXY_CALLBACK, FlowService, settings_from_args

    os.environ[PROXY_CALLBACK[0]] = PROXY_CALLBACK[1]
    temp_dir = tempfile.mkdtemp(prefix="rb", dir="/tmp")
    ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=100 * 2**20, _temp_dir=temp_dir)
    try:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        deployment = FlowService.options(
            num_replicas=replicas, ray_actor_options={"num_cpus": cpus / replicas}
        )
        serve.run(deployment.bind(settings_from_args(settings)), name="flows", route_prefix="/")
        _wait_ready(f"http://127.0.0.1:{port}")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


async def _closed_loop(url: str, clients: int, seconds: float, request) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        deadline, latencies = time.perf_counter() + seconds, []

        async def worker() -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                r = await request(client)
                r.raise_for_status()
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return {"req_per_s": len(latencies) / elapsed, "p50_ms": 1e3 * statistics.median(latencies)}


def measure(url: str, args: argparse.Namespace, digit: bytes) -> dict[str, dict[str, float]]:
    """Per endpoint: median and p95 latency of sequential requests; then concurrent throughput."""
    requests = {
        "GET /health/live": lambda c: c.get("/health/live"),
        "POST /sample (1 image)": lambda c: c.post("/sample", json={"num_samples": 1, "format": "npy"}),
        "POST /logprob (1 image)": lambda c: c.post(
            "/logprob", files=[("files", ("d.png", digit, "image/png"))]
        ),
    }
    out: dict[str, dict[str, float]] = {}
    with httpx.Client(base_url=url, timeout=60) as client:
        for name, request in requests.items():
            for _ in range(10):
                request(client).raise_for_status()
            times = []
            for _ in range(args.requests):
                started = time.perf_counter()
                request(client).raise_for_status()
                times.append(time.perf_counter() - started)
            times.sort()
            out[name] = {
                "p50_ms": 1e3 * times[len(times) // 2],
                "p95_ms": 1e3 * times[int(0.95 * len(times))],
            }

    async def sample4(c: httpx.AsyncClient) -> httpx.Response:
        return await c.post("/sample", json={"num_samples": 4, "format": "npy"})

    out[f"POST /sample (4 images) x{args.clients} clients"] = asyncio.run(
        _closed_loop(url, args.clients, args.seconds, sample4)
    )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=200, help="sequential requests per endpoint")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=10.0, help="duration of the concurrent run")
    p.add_argument("--backend", default="torch")
    args = p.parse_args()
    settings = {"models": str(ROOT / "checkpoints"), "backend": args.backend, "max_batch_images": 64}
    digit = encode_png(load_mnist().test[0])
    with plain_server(settings) as url:
        plain = measure(url, args, digit)
    with local_serve(settings, replicas=1) as url:
        served = measure(url, args, digit)
    rows = []
    for name in plain:
        row: dict[str, Any] = {"request": name}
        for key in plain[name]:
            row[f"plain_{key}"], row[f"serve_{key}"] = plain[name][key], served[name][key]
        if "p50_ms" in plain[name] and "req_per_s" not in plain[name]:
            row["overhead_p50_ms"] = served[name]["p50_ms"] - plain[name]["p50_ms"]
        if "req_per_s" in plain[name]:
            row["serve_over_plain_throughput"] = served[name]["req_per_s"] / plain[name]["req_per_s"]
        rows.append(row)
    cols = [
        "request",
        "plain_p50_ms",
        "serve_p50_ms",
        "overhead_p50_ms",
        "plain_p95_ms",
        "serve_p95_ms",
        "plain_req_per_s",
        "serve_req_per_s",
        "serve_over_plain_throughput",
    ]
    print("Ray Serve (1 replica, local) vs python -m service; same app and settings, same machine")
    print_table(rows, cols)
    print("wrote", write_results("serve_overhead", rows, settings=settings, clients=args.clients))


if __name__ == "__main__":
    main()

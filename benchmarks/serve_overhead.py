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

from benchmarks.common import free_port, print_table, write_results
from model.data import load_mnist
from model.images import encode_png


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
    port = free_port()
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
def local_serve(
    settings: dict[str, Any], replicas: int = 1, cpus: int = 2, access_log: bool = False
) -> Iterator[str]:
    """A local Ray instance with the service deployed as `replicas` Serve replicas on 127.0.0.1."""
    os.environ.update({"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"})
    import ray
    from ray import serve

    from service.ray_serve import PROXY_CALLBACK, FlowService, settings_from_args

    os.environ[PROXY_CALLBACK[0]] = PROXY_CALLBACK[1]
    temp_dir = tempfile.mkdtemp(prefix="rb", dir="/tmp")
    ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=100 * 2**20, _temp_dir=temp_dir)
    try:
        port = free_port()
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


def _sequential(urls: dict[str, str], args: argparse.Namespace, digit: bytes) -> list[dict[str, Any]]:
    """Per endpoint, one request at a time, alternating between the servers (the machine's load hits both)."""
    requests = {
        "GET /health/live": lambda c: c.get("/health/live"),
        "POST /sample (1 image)": lambda c: c.post(
            "/sample", json={"model": args.model, "num_samples": 1, "format": "npy"}
        ),
        "POST /logprob (1 image)": lambda c: c.post(
            "/logprob", files=[("files", ("d.png", digit, "image/png"))], data={"model": args.model}
        ),
    }
    clients = {name: httpx.Client(base_url=url, timeout=60) for name, url in urls.items()}
    rows = []
    try:
        for label, request in requests.items():
            times: dict[str, list[float]] = {name: [] for name in clients}
            for i in range(args.requests + 10):
                for name, client in clients.items():
                    started = time.perf_counter()
                    request(client).raise_for_status()
                    if i >= 10:  # the first ten warm up
                        times[name].append(time.perf_counter() - started)
            row: dict[str, Any] = {"request": label}
            for name, values in times.items():
                values.sort()
                row[f"{name}_p50_ms"] = 1e3 * values[len(values) // 2]
                row[f"{name}_p95_ms"] = 1e3 * values[int(0.95 * len(values))]
            row["overhead_p50_ms"] = row["serve_p50_ms"] - row["plain_p50_ms"]
            rows.append(row)
    finally:
        for client in clients.values():
            client.close()
    return rows


def _concurrent(urls: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    async def sample(c: httpx.AsyncClient) -> httpx.Response:
        return await c.post("/sample", json={"model": args.model, "num_samples": 4, "format": "npy"})

    row: dict[str, Any] = {"request": f"POST /sample (4 images), {args.clients} clients"}
    for name, url in urls.items():
        result = asyncio.run(_closed_loop(url, args.clients, args.seconds, sample))
        row[f"{name}_p50_ms"], row[f"{name}_req_per_s"] = result["p50_ms"], result["req_per_s"]
    row["overhead_p50_ms"] = row["serve_p50_ms"] - row["plain_p50_ms"]
    row["serve_over_plain_throughput"] = row["serve_req_per_s"] / row["plain_req_per_s"]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=200, help="sequential requests per endpoint and server")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=10.0, help="duration of each concurrent run")
    p.add_argument("--model", default="glow-mnist", help="a cheap model keeps the proxy's share visible")
    p.add_argument("--backend", default="torch")
    p.add_argument("--serve-access-log", action="store_true", help="Serve's own access log on (its default)")
    args = p.parse_args()
    settings = {
        "models": str(ROOT / "checkpoints"),
        "backend": args.backend,
        "max_batch_images": 64,
        "torch_threads": 1,  # Ray gives a 1-CPU replica one thread; the plain server gets the same
    }
    digit = encode_png(load_mnist().test[0])
    with (
        plain_server(settings) as plain_url,
        local_serve(settings, replicas=1, cpus=1, access_log=args.serve_access_log) as serve_url,
    ):
        urls = {"plain": plain_url, "serve": serve_url}
        rows = [*_sequential(urls, args, digit), _concurrent(urls, args)]
    cols = ["request", "plain_p50_ms", "serve_p50_ms", "overhead_p50_ms", "plain_p95_ms", "serve_p95_ms",
            "plain_req_per_s", "serve_req_per_s", "serve_over_plain_throughput"]  # fmt: skip
    variant = "Serve access log on" if args.serve_access_log else "Serve access log off (our default)"
    print(
        f"Ray Serve (1 replica, local) vs python -m service, same app and settings; {args.model}; {variant}"
    )
    print_table(rows, cols)
    name = "serve_overhead_access_log" if args.serve_access_log else "serve_overhead"
    print("wrote", write_results(name, rows, settings=settings, model=args.model, variant=variant))


if __name__ == "__main__":
    main()

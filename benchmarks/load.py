"""Load test of the service against the raw model, in one run: idle overhead, throughput, p99 under load.

    python benchmarks/load.py [--url http://127.0.0.1:8000 | --server-root DIR --server-python PY]
                              [--scenarios logprob:4 logprob:64 sample:4 sample:64] [--tag inline_off]

Without `--url` it starts `python -m service` on a free port (from `--server-root`, default this checkout,
so another checkout can be measured with the same client: an A/B of a change). Three parts:

1. **Idle overhead**: one request at a time over a keep-alive `http.client` connection (a client that
   costs ~0.1 ms, so the number is the server's), for `/logprob` JSON, `/logprob` multipart and `/sample`
   (PNG), 4 images each: service p50 minus the raw model's p50 on the same batch. Target ≤ 1.5 ms (CPU).
   Beside it, the floor (`GET /health/live`) and the raw model called after the idle time it has
   between batches in the service (`raw_after_idle`): what of the overhead is the machine, not the code.
2. **Throughput** per scenario `op:images`: closed loop with 1 and `--clients` clients, beside the raw
   model's images/s at the mean batch size the server formed. The load comes from aiohttp on uvloop in
   this process (~0.15 ms of CPU per request; httpx, `--generator httpx`, costs ~1.6 ms), since on a small
   machine the generator takes its CPU from the server. Targets at 16 clients: ≥ 60% of raw with
   4 images per request, ≥ 85% with 64.
3. **p99 at half of peak** (open-loop Poisson arrivals) over the single-client p50. Target ≤ 2.

It also reports the server's CPU time per request (from /proc): the whole process, and its main thread
alone (the event loop: HTTP, parsing, decoding, encoding; inference runs on another thread). Writes
benchmarks/results/load_<tag>.json.

`--serve-replicas N` targets a local Ray Serve deployment of N replicas instead (the `.[ray]` extra);
/metrics then shows the batches of whichever replica answers it, and the CPU columns are empty (the
replicas are Ray workers, not one server process).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np
import torch
import uvloop
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import free_port, print_table, write_results
from model.data import load_mnist
from model.images import encode_png
from model.malloc import tune_malloc
from service.model_api import ServedModel
from service.runtime import resolve_threads

TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int | None, main_thread: bool = False) -> float:
    """User + system CPU seconds of process `pid`, or of its main thread (the event loop's)."""
    if pid is None:
        return float("nan")
    stat = Path(f"/proc/{pid}/task/{pid}/stat" if main_thread else f"/proc/{pid}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _batch_stats(text: str, op: str) -> tuple[float, float]:
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "flows_batch_images":
            for s in family.samples:
                if s.labels.get("op") == op and s.name.endswith("_sum"):
                    total += s.value
                elif s.labels.get("op") == op and s.name.endswith("_count"):
                    count += s.value
    return total, count


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def multipart_body(files: list[bytes], model: str) -> tuple[bytes, str]:
    """A `/logprob` multipart body (the model field, then each PNG as `files`) and its content type."""
    boundary = "flowsbenchboundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n'.encode()]
    for i, data in enumerate(files):
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{i}.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class Requests:
    """The request bodies of one scenario, built once."""

    def __init__(self, op: str, images: int, model: str, digits: list[bytes], kind: str = "multipart"):
        self.op, self.images, self.kind = op, images, kind
        if op == "sample":
            self.path, self.content_type = "/sample", "application/json"
            fmt = "png" if kind == "png" else "npy"
            self.body = json.dumps({"model": model, "num_samples": images, "format": fmt}).encode()
        elif kind == "json":
            self.path, self.content_type = "/logprob", "application/json"
            encoded = [base64.b64encode(d).decode() for d in digits[:images]]
            self.body = json.dumps({"model": model, "images": encoded}).encode()
        else:
            self.path = "/logprob"
            self.body, self.content_type = multipart_body(digits[:images], model)


class _Health:
    """`GET /health/live`: the floor of any request (HTTP, middleware, routing, a JSON body)."""

    op, kind, path, content_type, body = "health", "get", "/health/live", "application/json", None


HEALTH = _Health()


def idle_latencies(url: str, req: Requests | _Health, n: int, warmup: int = 5) -> list[float]:
    """`n` sequential requests on one keep-alive connection; seconds each (after `warmup` requests)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    headers = {"Content-Type": req.content_type}
    out = []
    for i in range(n + warmup):
        started = time.perf_counter()
        conn.request("POST" if req.body else "GET", req.path, body=req.body, headers=headers)
        response = conn.getresponse()
        response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"{req.path}: HTTP {response.status}")
        if i >= warmup:
            out.append(elapsed)
    conn.close()
    return out


class Load:
    """Closed- and open-loop load from this process. The generator shares the machine with the server, so
    it must be cheap: aiohttp costs ~0.15 ms of CPU per request here, httpx ~1.6 ms (`--generator`)."""

    def __init__(
        self,
        session: aiohttp.ClientSession | httpx.AsyncClient,
        req: Requests,
        duration: float,
        pid: int | None,
    ):
        self.session, self.req, self.duration, self.pid = session, req, duration, pid
        self.headers = {"content-type": req.content_type}
        self.is_httpx = isinstance(session, httpx.AsyncClient)
        self.request = self._httpx if self.is_httpx else self._aiohttp

    async def _aiohttp(self) -> tuple[float, int]:
        started = time.perf_counter()
        async with self.session.post(self.req.path, data=self.req.body, headers=self.headers) as r:
            await r.read()
        return time.perf_counter() - started, r.status

    async def _httpx(self) -> tuple[float, int]:
        started = time.perf_counter()
        r = await self.session.post(self.req.path, content=self.req.body, headers=self.headers)
        return time.perf_counter() - started, r.status_code

    async def metrics(self) -> str:
        if self.is_httpx:
            return (await self.session.get("/metrics")).text
        async with self.session.get("/metrics") as r:
            return await r.text()

    async def level(self, label: str, runner) -> dict[str, Any]:
        before = _batch_stats(await self.metrics(), self.req.op)
        cpu0, loop0, client0 = _cpu_s(self.pid), _cpu_s(self.pid, main_thread=True), time.process_time()
        started = time.perf_counter()
        results = await runner()
        elapsed = time.perf_counter() - started
        cpu1, loop1, client1 = _cpu_s(self.pid), _cpu_s(self.pid, main_thread=True), time.process_time()
        after = _batch_stats(await self.metrics(), self.req.op)
        ok = [lat for lat, status in results if status == 200]
        rejected = sum(1 for _, status in results if status in (429, 503))
        batches = after[1] - before[1]
        return {
            "scenario": f"{self.req.op}:{self.req.images}",
            "load": label,
            "requests": len(results),
            "images_per_s": len(ok) * self.req.images / elapsed,
            "p50_ms": 1e3 * _percentile(ok, 0.5),
            "p99_ms": 1e3 * _percentile(ok, 0.99),
            "rejected_pct": 100 * rejected / max(1, len(results)),
            "errors": sum(1 for _, s in results if s not in (200, 429, 503)),
            "mean_batch_images": (after[0] - before[0]) / batches if batches else float("nan"),
            "server_cpu_ms_per_request": 1e3 * (cpu1 - cpu0) / max(1, len(results)),
            "server_cpu_util": (cpu1 - cpu0) / elapsed,
            "loop_cpu_ms_per_request": 1e3 * (loop1 - loop0) / max(1, len(results)),
            "loop_cpu_util": (loop1 - loop0) / elapsed,
            "client_cpu_ms_per_request": 1e3 * (client1 - client0) / max(1, len(results)),
        }

    async def closed(self, clients: int) -> dict[str, Any]:
        deadline = time.perf_counter() + self.duration

        async def worker() -> list[tuple[float, int]]:
            out = []
            while time.perf_counter() < deadline:
                out.append(await self.request())
            return out

        async def run():
            return [x for chunk in await asyncio.gather(*(worker() for _ in range(clients))) for x in chunk]

        return await self.level(f"closed x{clients}", run)

    async def open(self, rate: float) -> dict[str, Any]:
        rng = random.Random(0)

        async def run():
            tasks, t = [], time.perf_counter()
            deadline = t + self.duration
            while t < deadline:
                tasks.append(asyncio.ensure_future(self.request()))
                t += rng.expovariate(rate)
                await asyncio.sleep(max(0.0, t - time.perf_counter()))
            return await asyncio.gather(*tasks)

        return await self.level(f"open {rate:.0f} req/s", run)


async def drive(url: str, req: Requests, args: argparse.Namespace, pid: int | None) -> list[dict[str, Any]]:
    if args.generator == "aiohttp":
        connector = aiohttp.TCPConnector(limit=256)
        session = aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(total=120))
    else:
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        session = httpx.AsyncClient(base_url=url, timeout=120, limits=limits)
    async with session:
        load = Load(session, req, args.duration, pid)
        for _ in range(5):
            await load.request()
        rows = [await load.closed(1)]
        for clients in args.clients:
            rows.append(await load.closed(clients))
        peak = max(r["images_per_s"] for r in rows)
        half = await load.open(0.5 * peak / req.images)
        half["load"] += " (half of peak)"
        half["p99_over_single_p50"] = half["p99_ms"] / rows[0]["p50_ms"]
        rows.append(half)
    return rows


def measure_idle(url: str, pid: int | None, raw: RawModel, req: Requests, args: argparse.Namespace) -> dict:
    """Service and raw model in alternating blocks (a shared machine drifts), p50 of each. Two diagnostics
    beside the target's number: the floor (`GET /health/live`, any request's cost through HTTP and the
    middleware) and the raw model called with the idle time it has between batches in the service (a
    request-at-a-time server idles while the response travels; on this VM the next call then runs slower)."""
    service, model, idle_model, floor, loop_cpu = [], [], [], [], 0.0
    rounds, gap = 5, 0.0
    for _ in range(rounds):
        model += raw.seconds(req.op, req.images, max(3, args.raw_repeats // rounds))
        cpu0 = _cpu_s(pid, main_thread=True)
        service += idle_latencies(url, req, args.idle_requests // rounds)
        loop_cpu += _cpu_s(pid, main_thread=True) - cpu0
        floor += idle_latencies(url, HEALTH, args.idle_requests // rounds)
        gap = max(0.0, statistics.median(service) - statistics.median(model))
        idle_model += raw.seconds(req.op, req.images, max(3, args.raw_repeats // rounds), gap_s=gap)
    service_p50, raw_p50 = 1e3 * statistics.median(service), 1e3 * statistics.median(model)
    idle_raw_p50 = 1e3 * statistics.median(idle_model)
    return {
        "request": f"{req.op} {'png' if req.op == 'sample' else req.kind} x{req.images}",
        "service_p50_ms": service_p50,
        "raw_p50_ms": raw_p50,
        "overhead_ms": service_p50 - raw_p50,
        "floor_p50_ms": 1e3 * statistics.median(floor),
        "raw_after_idle_p50_ms": idle_raw_p50,
        "overhead_vs_raw_after_idle_ms": service_p50 - idle_raw_p50,
        "loop_cpu_ms_per_request": 1e3 * loop_cpu / (rounds * (args.idle_requests // rounds + 5)),
    }


class RawModel:
    """The model called directly, on the backend the server chose for each pass."""

    def __init__(self, args: argparse.Namespace, backends: dict[str, str]):
        onnx = any(b.startswith("onnxruntime") for b in backends.values())
        path = Path(args.models) / args.model
        # The server's thread count (resolved the same way) and malloc settings: the same computation.
        tune_malloc()
        self.threads = resolve_threads(args.torch_threads, torch.device("cpu"))
        if self.threads:
            torch.set_num_threads(self.threads)
        self.model = ServedModel.load(path, torch.device("cpu"), "onnx" if onnx else "torch", self.threads)
        self.model.use_onnx = {
            "sample": backends.get("sample", "").startswith("onnxruntime"),
            "score": backends.get("logprob", "").startswith("onnxruntime"),
        }

    def seconds(self, op: str, batch: int, repeats: int, gap_s: float = 0.0) -> list[float]:
        """Wall seconds per call, back to back, or with `gap_s` of idle time before each call."""
        model = self.model
        images = model.decode(model.draw_latents(batch, 1.0, 0))
        latents = model.draw_latents(batch, 1.0, 1)
        fn = (lambda: model.decode(latents)) if op == "sample" else (lambda: model.logprob(images))
        with torch.inference_mode():
            for _ in range(3):
                fn()
            runs = []
            for _ in range(repeats):
                if gap_s:
                    time.sleep(gap_s)
                start = time.perf_counter()
                fn()
                runs.append(time.perf_counter() - start)
        return runs


def _start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    port = free_port()
    root = Path(args.server_root or ROOT)
    command = [args.server_python or sys.executable, "-m", "service", "--port", str(port)]
    command += ["--models", args.models, "--backend", args.backend, "--log-level", "warning"]
    command += ["--max-batch-images", str(args.max_batch_images), *args.server_args]
    if args.torch_threads:
        command += ["--torch-threads", str(args.torch_threads)]
    server = subprocess.Popen(command, cwd=root)
    url = f"http://127.0.0.1:{port}"
    for _ in range(1500):
        try:
            if httpx.get(url + "/health/ready", timeout=1).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode}")
        time.sleep(0.2)
    raise TimeoutError("server not ready")


def start_server(
    models: str, server_args: list[str] | None = None, server_root: str | None = None
) -> tuple[subprocess.Popen, str]:
    """`python -m service` from this checkout (or `server_root`) with its defaults (backend and threads
    auto, batches of 64)."""
    options = argparse.Namespace(
        server_root=server_root,
        server_python=None,
        models=models,
        backend="auto",
        max_batch_images=64,
        server_args=server_args or [],
        torch_threads=0,
    )
    return _start_server(options)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default=None, help="a running server; default: start one")
    p.add_argument("--pid", type=int, default=None, help="with --url: the server's pid, for its CPU time")
    p.add_argument("--server-root", default=None, help="checkout to start the server from")
    p.add_argument("--server-python", default=None, help="interpreter for the server")
    p.add_argument("--server-args", nargs="*", default=[], help="extra server options")
    p.add_argument("--models", default=str(ROOT / "checkpoints"))
    p.add_argument("--model", default="finc-mnist")
    p.add_argument(
        "--scenarios",
        nargs="*",
        default=["logprob:4", "logprob:64", "sample:4", "sample:64"],
        help="none: idle only",
    )
    p.add_argument("--clients", type=int, nargs="+", default=[16])
    p.add_argument("--duration", type=float, default=6.0, help="seconds per load level")
    p.add_argument("--idle-requests", type=int, default=200)
    p.add_argument("--backend", default="auto")
    p.add_argument(
        "--torch-threads", type=int, default=0, help="server and raw-model threads (0: the server's auto)"
    )
    p.add_argument("--max-batch-images", type=int, default=64)
    p.add_argument("--raw-repeats", type=int, default=50)
    p.add_argument(
        "--generator", choices=["aiohttp", "httpx"], default="aiohttp", help="the load's HTTP client"
    )
    p.add_argument(
        "--tag",
        default="latest",
        help="what this run measures: results go to benchmarks/results/load_<tag>.json",
    )
    p.add_argument("--serve-replicas", type=int, default=0, help="target a local Ray Serve deployment")
    args = p.parse_args()
    stack = contextlib.ExitStack()
    server, url = None, args.url
    if url is None and args.serve_replicas:
        from benchmarks.serve_overhead import local_serve

        settings = {"models": args.models, "backend": args.backend, "max_batch_images": args.max_batch_images}
        url = stack.enter_context(local_serve(settings, replicas=args.serve_replicas))
    elif url is None:
        server, url = _start_server(args)
    pid = server.pid if server else args.pid
    digits = [encode_png(d) for d in load_mnist().test[:256]]
    try:
        backends = httpx.get(f"{url}/models/{args.model}", timeout=10).json()["backend"]
        raw = RawModel(args, backends)
        idle = [
            measure_idle(url, pid, raw, Requests(op, 4, args.model, digits, kind), args)
            for op, kind in (("logprob", "json"), ("logprob", "multipart"), ("sample", "png"))
        ]
        rows = []
        for scenario in args.scenarios:
            op, images = scenario.split(":")
            req = Requests(op, int(images), args.model, digits)
            for row in uvloop.run(drive(url, req, args, pid)):
                # the raw model right after its scenario, so both see the same machine load
                mean = row["mean_batch_images"]
                batch = max(1, round(mean)) if np.isfinite(mean) else 1
                raw_s = statistics.median(raw.seconds(op, batch, max(5, args.raw_repeats // 3)))
                row["raw_images_per_s_at_batch"] = batch / raw_s
                row["service_over_raw"] = row["images_per_s"] / row["raw_images_per_s_at_batch"]
                rows.append(row)
    finally:
        if server is not None:
            server.terminate()
            server.wait(60)
        stack.close()
    threads = raw.threads or torch.get_num_threads()
    print(f"model {args.model}, backends {backends}, {threads} inference threads, tag {args.tag}")
    idle_columns = ["request", "service_p50_ms", "raw_p50_ms", "overhead_ms", "floor_p50_ms"]
    idle_columns += ["raw_after_idle_p50_ms", "overhead_vs_raw_after_idle_ms", "loop_cpu_ms_per_request"]
    print_table(idle, idle_columns)
    cols = [
        "scenario",
        "load",
        "requests",
        "images_per_s",
        "p50_ms",
        "p99_ms",
        "rejected_pct",
        "errors",
        "mean_batch_images",
        "service_over_raw",
        "p99_over_single_p50",
        "server_cpu_ms_per_request",
        "server_cpu_util",
        "loop_cpu_ms_per_request",
        "loop_cpu_util",
        "client_cpu_ms_per_request",
    ]
    print_table(rows, cols)
    print(
        "wrote",
        write_results(
            f"load_{args.tag}",
            rows,
            idle=idle,
            model=args.model,
            backends=backends,
            inference_threads=threads,
            generator=args.generator,
            server_root=str(args.server_root or ROOT),
        ),
    )


if __name__ == "__main__":
    main()

"""Load test of the service: closed-loop and open-loop (Poisson) traffic against a real server.

    python benchmarks/load.py [--url http://127.0.0.1:8000] [--model finc-mnist] [--op sample]

Without `--url` it starts `python -m service` on a free port. Reports images/s, p50/p95/p99 latency,
rejection rate and mean batch size per load level, beside the raw model's throughput at the same batch
size measured in this run (same backend choice as the server), and writes benchmarks/results/load.json.
Targets: service throughput ≥ 80% of raw on the CPU (≥ 90% on a GPU); p99 at half of peak load ≤ 2× the
single-request latency.

`--serve-replicas N` targets a local Ray Serve deployment of N replicas instead (the `.[ray]` extra);
/metrics then shows the batches of whichever replica answers it.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import torch
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import print_table, write_results
from model.data import load_mnist
from model.images import encode_png
from service.model_api import ServedModel


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


class Load:
    def __init__(self, client: httpx.AsyncClient, args: argparse.Namespace, digits: list[bytes]):
        self.client, self.args, self.digits = client, args, digits

    async def request(self) -> tuple[float, int]:
        started = time.perf_counter()
        if self.args.op == "sample":
            r = await self.client.post(
                "/sample",
                json={"model": self.args.model, "num_samples": self.args.images, "format": "npy"},
            )
        else:
            files = [
                ("files", (f"{i}.png", d, "image/png")) for i, d in enumerate(self.digits[: self.args.images])
            ]
            r = await self.client.post("/logprob", files=files, data={"model": self.args.model})
        return time.perf_counter() - started, r.status_code

    async def level(self, label: str, runner) -> dict[str, Any]:
        before = _batch_stats((await self.client.get("/metrics")).text, self.args.op)
        started = time.perf_counter()
        results = await runner()
        elapsed = time.perf_counter() - started
        after = _batch_stats((await self.client.get("/metrics")).text, self.args.op)
        ok = [lat for lat, status in results if status == 200]
        rejected = sum(1 for _, status in results if status in (429, 503))
        batches = after[1] - before[1]
        return {
            "load": label,
            "requests": len(results),
            "images_per_s": len(ok) * self.args.images / elapsed,
            "p50_ms": 1e3 * _percentile(ok, 0.5),
            "p95_ms": 1e3 * _percentile(ok, 0.95),
            "p99_ms": 1e3 * _percentile(ok, 0.99),
            "rejected_pct": 100 * rejected / max(1, len(results)),
            "errors": sum(1 for _, s in results if s not in (200, 429, 503)),
            "mean_batch_images": (after[0] - before[0]) / batches if batches else float("nan"),
        }

    async def closed(self, clients: int) -> dict[str, Any]:
        deadline = time.perf_counter() + self.args.duration

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
            deadline = t + self.args.duration
            while t < deadline:
                tasks.append(asyncio.ensure_future(self.request()))
                t += rng.expovariate(rate)
                await asyncio.sleep(max(0.0, t - time.perf_counter()))
            return await asyncio.gather(*tasks)

        return await self.level(f"open {rate:.1f} req/s", run)


def raw_throughput(args: argparse.Namespace, batch: int) -> float:
    """Images/s of the model called directly at `batch` images per call (the server's backend choice)."""
    model = ServedModel.load(Path(args.models) / args.model, torch.device("cpu"), args.backend)
    model.warm_up([batch])
    images = model.decode(model.draw_latents(batch, 1.0, 0))
    latents = model.draw_latents(batch, 1.0, 1)
    fn = (lambda: model.decode(latents)) if args.op == "sample" else (lambda: model.score(images))
    with torch.inference_mode():
        fn()
        runs = []
        for _ in range(max(5, args.raw_repeats)):
            start = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - start)
    return batch / statistics.median(runs)


async def drive(args: argparse.Namespace, url: str) -> list[dict[str, Any]]:
    digits = [encode_png(d) for d in load_mnist().test[:256]]
    async with httpx.AsyncClient(
        base_url=url, timeout=120, limits=httpx.Limits(max_connections=256)
    ) as client:
        load = Load(client, args, digits)
        for _ in range(5):
            await load.request()
        rows = [await load.closed(1)]
        single_p50 = rows[0]["p50_ms"]
        for clients in args.clients:
            rows.append(await load.closed(clients))
        peak = max(r["images_per_s"] for r in rows)
        for fraction in (0.5, 0.9):
            rows.append(await load.open(fraction * peak / args.images))
        rows[-2]["load"] += " (half of peak)"
        rows[-2]["p99_over_single_p50"] = rows[-2]["p99_ms"] / single_p50
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default=None, help="a running server; default: start one")
    p.add_argument("--models", default=str(ROOT / "checkpoints"))
    p.add_argument("--model", default="finc-mnist")
    p.add_argument("--op", choices=["sample", "logprob"], default="sample")
    p.add_argument("--images", type=int, default=4, help="images per request")
    p.add_argument("--clients", type=int, nargs="+", default=[4, 16, 32])
    p.add_argument("--duration", type=float, default=10.0, help="seconds per load level")
    p.add_argument("--backend", default="auto")
    p.add_argument("--max-batch-images", type=int, default=64)
    p.add_argument("--raw-repeats", type=int, default=20)
    p.add_argument("--serve-replicas", type=int, default=0, help="target a local Ray Serve deployment")
    args = p.parse_args()
    server = serve_app = None
    url = args.url
    if url is None and args.serve_replicas:
        from benchmarks.serve_overhead import local_serve

        settings = {"models": args.models, "backend": args.backend, "max_batch_images": args.max_batch_images}
        serve_app = local_serve(settings, replicas=args.serve_replicas)
        url = serve_app.__enter__()
    if url is None:
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service",
                "--port",
                str(port),
                "--models",
                args.models,
                "--backend",
                args.backend,
                "--max-batch-images",
                str(args.max_batch_images),
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
        )
        for _ in range(600):
            try:
                if httpx.get(url + "/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    try:
        rows = asyncio.run(drive(args, url))
    finally:
        if server is not None:
            server.terminate()
            server.wait(60)
        if serve_app is not None:
            serve_app.__exit__(None, None, None)
    best = max(rows, key=lambda r: r["images_per_s"])
    batch = max(1, round(best["mean_batch_images"]))
    raw = raw_throughput(args, batch)
    for r in rows:
        r["raw_images_per_s_at_batch"] = raw
        r["service_over_raw"] = r["images_per_s"] / raw
    cols = [
        "load",
        "requests",
        "images_per_s",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "rejected_pct",
        "errors",
        "mean_batch_images",
        "service_over_raw",
        "p99_over_single_p50",
    ]
    print(
        f"model {args.model}, op {args.op}, {args.images} images/request; raw model at batch {batch}: "
        f"{raw:.0f} images/s"
    )
    print_table(rows, cols)
    print(
        "wrote",
        write_results(f"load_{args.op}", rows, model=args.model, raw_batch=batch, raw_images_per_s=raw),
    )


if __name__ == "__main__":
    main()

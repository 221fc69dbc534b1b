"""Soak test (not a unit test): mixed /sample and /logprob traffic at twice the peak rate, bad requests too.

    python benchmarks/soak.py [--minutes 10] [--url http://127.0.0.1:8000] [--tag soak]

Without `--url` it starts `python -m service` on a free port. It first measures the peak rate (closed
loop, 16 clients), then sends open-loop Poisson traffic at `--overload`× that rate for `--minutes`:
valid /sample and /logprob requests (JSON and multipart, 1-8 images) and ~10% bad ones. With `--hostile`,
also ~3% of the bodies that once gave 500s or held the event loop (`benchmarks/hostile.py`: images and
.npy headers declaring huge sizes, a 16 MB flat list, a million JSON keys) and ~2% heavy requests (32
images scored at K = 64, refused early with 503 when the queue cannot take them). Checks:

- no response outside 200 / 4xx / 503 / 504, and no bad or hostile request answered 200;
- every 200 answered in full (the right number of decodable images or scores);
- server RSS growth < 5% from the end of warm-up (the first 20%) to the end;
- ready again (a fresh /sample answered 200) within a second after the load stops.

Prints a table and writes benchmarks/results/<tag>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import print_table, write_results
from benchmarks.hostile import worst_bodies
from benchmarks.load import multipart_body, start_server
from model.data import load_mnist
from model.images import encode_png


def _rss_mb(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


JSON = "application/json"
BAD = [
    ("/sample", b'{"num_samples": 2', JSON),
    ("/sample", b'{"num_samples": 0}', JSON),
    ("/sample", b'{"num_samples": true}', JSON),
    ("/sample", b'{"seed": "7"}', JSON),
    ("/sample", b'{"model": "nope"}', JSON),
    ("/logprob", b'{"images": []}', JSON),
    ("/logprob", b'{"images": [""]}', JSON),
    ("/logprob", b'{"images": ["@@@"]}', JSON),
    ("/logprob", b"abc", "text/plain"),
]


HEAVY_IMAGES = 32


class Traffic:
    """Draws requests, bodies built here so that sending costs the client little: (kind, path, body,
    content type, how many images a 200 must carry)."""

    def __init__(self, model: str, digits: list[bytes], seed: int = 0, hostile: bool = False):
        self.model, self.digits, self.rng = model, digits, random.Random(seed)
        self.bad = [*BAD, ("/logprob", *multipart_body([b"not an image"], model))]
        self.hostile_share = 0.05 if hostile else 0.0
        if hostile:  # ~26 MB of bodies: built only when sent
            bodies = worst_bodies()
            self.hostile = [(p, b, t) for label, p, b, t in bodies if not label.startswith("decode 256")]
            heavy = [base64.b64encode(d).decode() for d in digits[:HEAVY_IMAGES]]
            self.heavy = json.dumps({"images": heavy, "dequantization_samples": 64}).encode()

    def next(self) -> tuple[str, str, bytes, str, int]:
        r, rng = self.rng.random(), self.rng
        n = rng.randint(1, 8)
        picks = [self.digits[rng.randrange(len(self.digits))] for _ in range(n)]
        if r < 0.45:
            fmt = rng.choice(["png", "npy"])
            body = {"model": self.model, "num_samples": n, "format": fmt, "seed": rng.randrange(2**31)}
            return "sample", "/sample", json.dumps(body).encode(), JSON, n
        if r < 0.70:
            return "logprob_multipart", "/logprob", *multipart_body(picks, self.model), n
        if r < 0.90:
            images = [base64.b64encode(d).decode() for d in picks]
            return "logprob_json", "/logprob", json.dumps({"images": images}).encode(), JSON, n
        if r < 1.0 - self.hostile_share:
            path, body, content_type = rng.choice(self.bad)
            return "bad", path, body, content_type, 0
        if r < 1.0 - 0.4 * self.hostile_share:
            path, body, content_type = rng.choice(self.hostile)
            return "hostile", path, body, content_type, 0
        return "heavy", "/logprob", self.heavy, JSON, HEAVY_IMAGES


def _complete(kind: str, body: dict[str, Any], n: int) -> bool:
    """Whether a 200 carries the whole answer."""
    if kind == "sample":
        if body["format"] == "npy":
            return np.load(io.BytesIO(base64.b64decode(body["npy"]))).shape[0] == n
        return len(body["images"]) == n and all(
            base64.b64decode(im)[:4] == b"\x89PNG" for im in body["images"]
        )
    return len(body["results"]) == n and all(np.isfinite(r["log_prob"]) for r in body["results"])


async def _post(
    session: aiohttp.ClientSession, path: str, body: bytes, content_type: str
) -> tuple[int, bytes]:
    async with session.post(path, data=body, headers={"content-type": content_type}) as response:
        return response.status, await response.read()


async def _peak_rate(session: aiohttp.ClientSession, traffic: Traffic, seconds: float) -> float:
    deadline, done = time.perf_counter() + seconds, 0

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            kind, path, body, content_type, _ = traffic.next()
            if kind not in ("bad", "hostile", "heavy"):
                await _post(session, path, body, content_type)
                done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(16)))
    return done / (time.perf_counter() - started)


async def soak(url: str, pid: int | None, args: argparse.Namespace) -> dict[str, Any]:
    digits = [encode_png(d) for d in load_mnist().test[:256]]
    traffic = Traffic(args.model, digits, hostile=args.hostile)
    # Idle connections expire before uvicorn's 5 s keep-alive timeout closes them: otherwise a request
    # sent on a connection the server is closing at that instant fails (a client/server race, not a bug).
    connector = aiohttp.TCPConnector(limit=args.max_in_flight, keepalive_timeout=2.0)
    timeout = aiohttp.ClientTimeout(total=args.timeout_s)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:
        peak = await _peak_rate(session, traffic, args.peak_seconds)
        rate = args.overload * peak
        statuses: Counter[str] = Counter()
        problems: Counter[str] = Counter()
        latencies: list[float] = []
        rss: list[tuple[float, float]] = []
        in_flight = asyncio.Semaphore(args.max_in_flight)

        async def one(kind: str, path: str, body: bytes, content_type: str, n: int) -> None:
            try:
                started = time.perf_counter()
                status, answer = await _post(session, path, body, content_type)
                latencies.append(time.perf_counter() - started)
                statuses[f"{kind} {status}"] += 1
                if not (status == 200 or 400 <= status < 500 or status in (503, 504)):
                    problems[f"status {status}"] += 1
                elif kind in ("bad", "hostile") and status == 200:
                    problems["bad request accepted"] += 1
                elif status == 200 and not _complete(kind, json.loads(answer), n):
                    problems["incomplete answer"] += 1
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
                problems[f"client error {type(exc).__name__}"] += 1
            finally:
                in_flight.release()

        rng = random.Random(1)
        started = time.perf_counter()
        end = started + 60 * args.minutes
        tasks: set[asyncio.Task] = set()
        next_rss = started
        t = started
        skipped = 0
        while (now := time.perf_counter()) < end:  # wall clock: a client that falls behind sends late
            if now >= next_rss:
                rss.append((now - started, _rss_mb(pid)))
                next_rss += 5
            if in_flight.locked():
                skipped += 1  # the client's own cap, not the server's answer
            else:
                await in_flight.acquire()
                task = asyncio.ensure_future(one(*traffic.next()))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            t = max(t + rng.expovariate(rate), now - 1.0)  # never owe more than a second of arrivals
            await asyncio.sleep(max(0.0, t - time.perf_counter()))
        sending_s = time.perf_counter() - started
        await asyncio.gather(*tasks)
        stopped = time.perf_counter()
        rss.append((stopped - started, _rss_mb(pid)))
        while True:  # ready again: a fresh request answered 200
            status, _ = await _post(session, "/sample", b'{"num_samples": 1, "format": "npy"}', JSON)
            if status == 200 or time.perf_counter() - stopped > 30:
                break
            await asyncio.sleep(0.01)
        recovery_s = time.perf_counter() - stopped
    warm = [mb for s, mb in rss if s >= 0.2 * 60 * args.minutes]
    baseline = warm[0] if warm else float("nan")
    growth = 100 * (rss[-1][1] - baseline) / baseline
    total = sum(statuses.values())
    accepted = sum(v for k, v in statuses.items() if k.endswith(" 200"))
    return {
        "minutes": args.minutes,
        "peak_req_per_s": peak,
        "offered_req_per_s": rate,
        "sent": total,
        "sent_req_per_s": total / sending_s,
        "client_capped": skipped,
        "accepted_200": accepted,
        "rejected_503": sum(v for k, v in statuses.items() if k.endswith(" 503")),
        "timed_out_504": sum(v for k, v in statuses.items() if k.endswith(" 504")),
        "client_4xx": sum(v for k, v in statuses.items() if k.split()[-1].startswith("4")),
        "problems": dict(problems),
        "statuses": dict(sorted(statuses.items())),
        "p50_ms": 1e3 * float(np.median(latencies)) if latencies else float("nan"),
        "p99_ms": 1e3 * float(np.percentile(latencies, 99)) if latencies else float("nan"),
        "rss_mb": rss,
        "rss_after_warmup_mb": baseline,
        "rss_end_mb": rss[-1][1],
        "rss_growth_pct": growth,
        "ready_again_s": recovery_s,
        "checks": {
            "only_200_4xx_503_504": not any(k.startswith("status") for k in problems),
            "accepted_answered_in_full": problems["incomplete answer"] == 0
            and problems["bad request accepted"] == 0,
            "no_client_errors": not any(k.startswith("client error") for k in problems),
            "rss_growth_under_5pct": growth < 5,
            "ready_within_1s": recovery_s < 1.0,
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default=None, help="a running server; default: start one")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--overload", type=float, default=2.0, help="offered rate over the measured peak")
    p.add_argument("--peak-seconds", type=float, default=10.0)
    p.add_argument("--max-in-flight", type=int, default=512)
    p.add_argument("--timeout-s", type=float, default=60.0)
    p.add_argument("--models", default=str(ROOT / "checkpoints"))
    p.add_argument("--model", default="finc-mnist")
    p.add_argument("--pid", type=int, default=None, help="with --url: the server's pid, for its RSS")
    p.add_argument("--hostile", action="store_true", help="add hostile bodies and heavy requests")
    p.add_argument("--tag", default="soak")
    p.add_argument("--note", default="", help="a remark stored with the results")
    args = p.parse_args()
    server, url = None, args.url
    if url is None:
        server, url = start_server(args.models)
    try:
        result = uvloop.run(soak(url, server.pid if server else args.pid, args))
    finally:
        if server is not None:
            server.terminate()
            server.wait(60)
    rows = [{"check": k, "ok": v} for k, v in result["checks"].items()]
    print(
        json.dumps({k: v for k, v in result.items() if k not in ("rss_mb", "statuses", "checks")}, indent=1)
    )
    print_table(rows, ["check", "ok"])
    print("wrote", write_results(args.tag, rows, note=args.note, **result))
    sys.exit(0 if all(result["checks"].values()) else 1)


if __name__ == "__main__":
    main()

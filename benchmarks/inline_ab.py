"""Idle requests with batches on the inference thread (`--inline-max-ms 0`) against on the event loop.

    python benchmarks/inline_ab.py [--rounds 8] [--requests 40] [--inline-max-ms 50]

Starts both servers side by side and sends them one request at a time over a keep-alive connection in
alternating blocks (a shared machine drifts), for `/logprob` JSON, `/logprob` multipart and `/sample`
(PNG), 4 images each. Prints the p50 of each and their difference; writes
benchmarks/results/inline_ab.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import print_table, write_results
from benchmarks.load import Requests, idle_latencies, start_server
from model.data import load_mnist
from model.images import encode_png


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--requests", type=int, default=40, help="per server per round and request kind")
    p.add_argument("--inline-max-ms", type=float, default=50.0)
    p.add_argument("--models", default=str(ROOT / "checkpoints"))
    p.add_argument("--model", default="finc-mnist")
    args = p.parse_args()
    budgets = {"thread": "0", "inline": str(args.inline_max_ms)}
    servers = {}
    try:
        for name, budget in budgets.items():
            servers[name] = start_server(args.models, ["--inline-max-ms", budget])
        digits = [encode_png(d) for d in load_mnist().test[:4]]
        rows = []
        for op, kind in (("logprob", "json"), ("logprob", "multipart"), ("sample", "png")):
            req = Requests(op, 4, args.model, digits, kind)
            seconds: dict[str, list[float]] = {name: [] for name in servers}
            for _ in range(args.rounds):
                for name, (_, url) in servers.items():
                    seconds[name] += idle_latencies(url, req, args.requests)
            p50 = {name: 1e3 * statistics.median(s) for name, s in seconds.items()}
            rows.append(
                {
                    "request": f"{op} {kind} x4",
                    "thread_p50_ms": p50["thread"],
                    "inline_p50_ms": p50["inline"],
                    "saved_ms": p50["thread"] - p50["inline"],
                }
            )
    finally:
        for server, _ in servers.values():
            server.terminate()
            server.wait(60)
    print_table(rows, ["request", "thread_p50_ms", "inline_p50_ms", "saved_ms"])
    path = write_results(
        "inline_ab", rows, model=args.model, inline_max_ms=args.inline_max_ms, rounds=args.rounds
    )
    print("wrote", path)


if __name__ == "__main__":
    main()

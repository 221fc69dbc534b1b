"""Triton's perf_analyzer against flowserve's Open Inference Protocol routes: the load generator teams
already use runs unchanged against /v2 (scoring with batches of random images, sampling with a fixed
count), and gives throughput and latency percentiles.

    bash scripts/get_perf_analyzer.sh          # once: the binary into .venv/perf_analyzer/
    python benchmarks/oip_perf_analyzer.py [--model finc-mnist] [--window-ms 3000]

Starts a server from this checkout (or uses `--url`), runs each case of `CASES` and writes
benchmarks/results/oip_perf_analyzer.json. Pause other work on the machine first: the numbers are the
server's on a shared CPU otherwise.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_name, print_table, write_results
from benchmarks.load import start_server

BINARY = ROOT / ".venv" / "perf_analyzer" / "perf_analyzer"
# (protocol model suffix, batch size or samples per request, concurrency)
CASES: list[tuple[str, int, int]] = [
    ("", 1, 1),
    ("", 1, 8),
    ("", 16, 2),
    (".sample", 16, 1),
    (".sample", 1, 4),
]


def run_case(url: str, model: str, task_suffix: str, size: int, concurrency: int, window_ms: int) -> dict:
    """One perf_analyzer run: `size` images per scoring request (its batch size) or samples per sampling
    request (the `num_samples` input, from a data file), `concurrency` requests in flight."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.csv"
        command = [str(BINARY), "-m", model + task_suffix, "-u", url.removeprefix("http://"), "-i", "http"]
        command += ["--concurrency-range", str(concurrency), "--measurement-interval", str(window_ms)]
        command += ["-f", str(report)]
        if task_suffix:
            data = Path(tmp) / "data.json"
            data.write_text(json.dumps({"data": [{"num_samples": [size]}]}))
            command += ["--input-data", str(data), "--shape", "num_samples:1"]
        else:
            command += ["-b", str(size), "--shape", "images:1,28,28"]
        environment = {**os.environ, "LD_LIBRARY_PATH": str(BINARY.parent)}
        done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"perf_analyzer failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        row = next(csv.DictReader(report.open()))
    images = size  # per request: the scoring batch or the sampled images
    infer_per_s = float(row["Inferences/Second"])
    requests_per_s = infer_per_s / size if not task_suffix else infer_per_s
    return {
        "protocol model": model + task_suffix,
        "images/request": images,
        "concurrency": concurrency,
        "requests/s": round(requests_per_s, 1),
        "images/s": round(requests_per_s * images, 1),
        "p50 ms": int(row["p50 latency"]) / 1000,
        "p99 ms": int(row["p99 latency"]) / 1000,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default=None, help="a running server; default: start one from this checkout")
    p.add_argument("--models", default=str(ROOT / "checkpoints"))
    p.add_argument("--model", default="finc-mnist")
    p.add_argument("--window-ms", type=int, default=3000, help="perf_analyzer's measurement window")
    args = p.parse_args()
    if not BINARY.is_file():
        sys.exit(f"no {BINARY}: run `bash scripts/get_perf_analyzer.sh` first")
    server, url = (None, args.url) if args.url else start_server(args.models)
    try:
        rows: list[dict[str, Any]] = []
        for suffix, size, concurrency in CASES:
            rows.append(run_case(url, args.model, suffix, size, concurrency, args.window_ms))
            print(rows[-1], flush=True)
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
    print(f"\nperf_analyzer (tritonclient 2.40.0) against /v2 on {cpu_name()}")
    print_table(rows, list(rows[0]))
    path = write_results("oip_perf_analyzer", rows, perf_analyzer="tritonclient 2.40.0", model=args.model)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""The model's passes with glibc's malloc defaults against `model.malloc.tune_malloc()`, side by side.

    python benchmarks/malloc_ab.py [--models checkpoints] [--batches 4 64] [--rounds 2] [--repeats 5]

For each shipped checkpoint, `sample` (latents → images) and `score` (images → log-likelihoods) on torch at
each batch size, in fresh processes that alternate between the two settings (`FLOWS_TUNE_MALLOC=0/1`): the
median time per call and the minor page faults per call. One inference thread, as the server uses on this
machine. Writes benchmarks/results/malloc_ab.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def worker(path: Path, batches: list[int], repeats: int) -> dict[str, list[float]]:
    """In this process: {"op batch": [median ms, faults per call]}."""
    import torch

    from model.malloc import tune_malloc
    from service.model_api import ServedModel

    tune_malloc()
    torch.set_num_threads(1)
    model = ServedModel.load(path, torch.device("cpu"), "torch", 1)
    out = {}
    with torch.inference_mode():
        for batch in batches:
            latents = model.draw_latents(batch, 1.0, 1)
            images = model.decode(model.draw_latents(batch, 1.0, 0))
            passes = (("sample", lambda: model.decode(latents)), ("score", lambda: model.logprob(images)))
            for op, fn in passes:
                fn()
                times, faults = [], []
                for _ in range(repeats):
                    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                    start = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - start)
                    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
                out[f"{op} {batch}"] = [1e3 * statistics.median(times), statistics.median(faults)]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=str(ROOT / "checkpoints"))
    p.add_argument("--batches", type=int, nargs="+", default=[4, 64])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(Path(args.worker), args.batches, args.repeats)))
        return

    from benchmarks.common import print_table, write_results

    checkpoints = sorted(p for p in Path(args.models).iterdir() if (p / "config.json").is_file())
    rows = []
    for checkpoint in checkpoints:
        runs: dict[str, list[dict]] = {"0": [], "1": []}
        for _ in range(args.rounds):
            for setting in runs:
                command = [sys.executable, __file__, "--worker", str(checkpoint)]
                command += ["--repeats", str(args.repeats), "--batches", *map(str, args.batches)]
                env = {**os.environ, "FLOWS_TUNE_MALLOC": setting}
                done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
                runs[setting].append(json.loads(done.stdout.strip().splitlines()[-1]))
        for key in runs["0"][0]:
            default = [statistics.median(r[key][i] for r in runs["0"]) for i in range(2)]
            tuned = [statistics.median(r[key][i] for r in runs["1"]) for i in range(2)]
            op, batch = key.split()
            rows.append(
                {
                    "checkpoint": checkpoint.name,
                    "op": op,
                    "batch": int(batch),
                    "default_ms": default[0],
                    "tuned_ms": tuned[0],
                    "speedup": default[0] / tuned[0],
                    "default_faults": default[1],
                    "tuned_faults": tuned[1],
                }
            )
        print(f"measured {checkpoint.name}", file=sys.stderr, flush=True)
    columns = ["checkpoint", "op", "batch", "default_ms", "tuned_ms", "speedup", "default_faults"]
    print_table(rows, [*columns, "tuned_faults"])
    print("wrote", write_results("malloc_ab", rows, threads=1, rounds=args.rounds))


if __name__ == "__main__":
    main()

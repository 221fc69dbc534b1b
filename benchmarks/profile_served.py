"""Where the served path spends its time: a torch profile of sampling and scoring 100 images per shipped
MNIST model (`ServedModel`, as the service runs them), grouped into the solve, the coupling networks'
convolutions, other convolutions and the rest.

    python benchmarks/profile_served.py [--threads 2] [--repeats 5]

Writes benchmarks/results/profile_served.json (each group's share of the wall time, and the top operators).
Pause other work on the machine first.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_name, print_table, write_results
from kernels_cuda import cpu_backend
from service.model_api import ServedModel

MODELS = ["finc-mnist", "inverse-flow-mnist", "glow-mnist"]


def _label_the_solve() -> None:
    """The native solve is a ctypes call, which torch's profiler does not see: label it as a range."""
    for name in ("tl_conv2d_solve", "tl_conv2d_solve_transposed"):
        op = getattr(cpu_backend, name)

        def labelled(*args, _op=op, **kwargs):
            with record_function("flows_native_solve"):
                return _op(*args, **kwargs)

        setattr(cpu_backend, name, labelled)


def _group(name: str) -> str:
    """The part of the computation an operator belongs to."""
    if "solve" in name or name.startswith("flows_"):
        return "triangular solve"
    if "conv" in name or "mkldnn" in name:
        return "convolutions"
    if any(k in name for k in ("copy_", "to_", "contiguous", "clone", "_to_copy")):
        return "copies and layout"
    return "other"


def profile_pass(fn, repeats: int) -> tuple[dict[str, float], list[tuple[str, float]]]:
    """Each group's share of the self CPU time of `repeats` calls, and the five costliest operators."""
    with torch.inference_mode():
        fn()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(repeats):
                fn()
    # The solve's range has no torch ops inside, so its self time is the solve's own time.
    per_op = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    total = sum(per_op.values()) or 1.0
    groups: dict[str, float] = defaultdict(float)
    for name, t in per_op.items():
        groups[_group(name)] += t / total
    top = sorted(per_op.items(), key=lambda kv: -kv[1])[:5]
    return dict(groups), [(name, round(t / total, 3)) for name, t in top]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    _label_the_solve()
    rows = []
    for name in MODELS:
        model = ServedModel.load(ROOT / "checkpoints" / name, torch.device("cpu"), "torch")
        latents = model.draw_latents(100, 0.7, seed=0)
        images = model.decode(latents)
        for op, fn in (("sample", lambda: model.decode(latents)), ("score", lambda: model.logprob(images))):
            groups, top = profile_pass(fn, args.repeats)
            rows.append(
                {
                    "model": name,
                    "pass": op,
                    **{g: round(share, 3) for g, share in sorted(groups.items())},
                    "top operators": top,
                }
            )
    columns = ["model", "pass", "triangular solve", "convolutions", "copies and layout", "other"]
    print(f"share of CPU time, 100 images, {args.threads} threads, {cpu_name()}")
    print_table(rows, columns)
    print("wrote", write_results("profile_served", rows, repeats=args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""End to end on a GPU: time to sample 100 images and to score 100 images with each shipped model.

    python benchmarks/e2e_gpu.py [--n 100] [--repeats 10] [--out DIR]
    python benchmarks/e2e_gpu.py --dry-run     # no GPU: 2 images per model on the CPU, results to a temp dir

Per model and pass: the solve kernels (`FLOWS_KERNELS=auto`, i.e. `cuda` when loaded) vs the torch reference
(`torch`), frozen models in inference mode, synchronised wall time (median). Writes
benchmarks/results/e2e_gpu_<device>.json. Target: ≤ 10 ms for 100 FInC samples on an H100
(published: 90 ms on an RTX 2080 Ti).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import device_slug, median_seconds, print_table, write_results
from model import load_flow

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
COLUMNS = ["model", "pass", "n", "kernels_ms", "torch_ms", "torch/kernels"]
TARGETS = "<= 10 ms for 100 FInC samples on an H100"


def time_passes(path: Path, device: str, n: int, repeats: int, kernel_backend: str) -> dict[str, float]:
    """Median ms of sampling `n` images and scoring `n` images with FLOWS_KERNELS=`kernel_backend`."""
    os.environ["FLOWS_KERNELS"] = kernel_backend
    flow = load_flow(path, device=device).freeze()
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.inference_mode():
        images = flow.sample(n, temperature=0.7, generator=gen)
        return {
            "sample": 1e3 * median_seconds(lambda: flow.sample(n, 0.7, gen), repeats, warmup=2),
            "score": 1e3 * median_seconds(lambda: flow.log_prob(images), repeats, warmup=2),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="images per pass")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--models", type=Path, default=CHECKPOINTS)
    parser.add_argument("--dry-run", action="store_true", help="no GPU: tiny batches on the CPU")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    paths = sorted(p for p in args.models.iterdir() if (p / "config.json").is_file())
    if not paths:
        print(f"no checkpoints under {args.models}", file=sys.stderr)
        return 2
    if args.dry_run:
        device, n, repeats, kernels, device_name = "cpu", 2, 1, "cuda_host", "cpu (dry run)"
        out = args.out or Path(tempfile.mkdtemp(prefix="e2e_gpu_dry_"))
    else:
        import kernels_cuda

        if not torch.cuda.is_available():
            print("needs a CUDA device", file=sys.stderr)
            return 2
        if kernels_cuda.prepare("cuda") != "cuda":
            print("warning: CUDA kernels unavailable; both columns run the torch reference", file=sys.stderr)
        device, n, repeats, kernels = "cuda", args.n, args.repeats, "auto"
        device_name, out = torch.cuda.get_device_name(), args.out
    previous = os.environ.get("FLOWS_KERNELS")
    rows = []
    try:
        for path in paths:
            ours = time_passes(path, device, n, repeats, kernels)
            ref = time_passes(path, device, n, repeats, "torch")
            for name in ("sample", "score"):
                rows.append(
                    {
                        "model": path.name,
                        "pass": name,
                        "n": n,
                        "kernels_ms": ours[name],
                        "torch_ms": ref[name],
                        "torch/kernels": ref[name] / ours[name],
                    }
                )
    finally:
        if previous is None:
            os.environ.pop("FLOWS_KERNELS", None)
        else:
            os.environ["FLOWS_KERNELS"] = previous
    print_table(rows, COLUMNS)
    path = write_results(f"e2e_gpu_{device_slug(device_name)}", rows, directory=out, device=device_name,
                         targets=TARGETS)  # fmt: skip
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

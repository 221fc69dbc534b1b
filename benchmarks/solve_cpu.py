"""CPU speed of `A⁻¹y` and `A⁻ᵀg`: the native solve against the torch reference and `F.conv2d` of the
same shape, idle and beside a process spinning on one core, in one run.

    python benchmarks/solve_cpu.py [--quick] [--threads N]

Prints a table (median ms, ratios to the convolution, busy-core slowdowns) and writes
benchmarks/results/solve_cpu.json. Targets: at B = 1, ours ≤ 2.7× the convolution (the published serial
code's ratio); at B ≥ 16, ≤ 2× at every shape; beside a busy core, ours slows down ≤ 1.5×. The published
FInC Flow CPU inverse is not rebuilt here: its ratios to the convolution, measured side by side on this
machine type (serial: its OpenMP version gives wrong answers), are quoted from that measurement.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import busy_core, median_seconds, print_table, write_results
from kernels_cuda import cpu_backend, reference, serving_backend, tl_conv2d_solve, tl_conv2d_solve_transposed
from model.malloc import tune_malloc

# (B, C, H, W) with k = 3, and the published serial CPU inverse's time over F.conv2d's on the same shape.
SHAPES = {
    (1, 8, 14, 14): 2.7,
    (16, 16, 32, 32): 22.0,
    (100, 8, 14, 14): 12.0,
    (100, 48, 16, 16): 74.0,
}
TARGET_B1, TARGET_BATCH, TARGET_BUSY = 2.7, 2.0, 1.5


def make_weight(c: int, k: int = 3) -> torch.Tensor:
    """A masked kernel as training initialises it (N(0, 0.05) taps, unit lower-triangular centre)."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(c, c, k, k, generator=gen) * 0.05
    w[:, :, k - 1, k - 1] = torch.tril(w[:, :, k - 1, k - 1], -1) + torch.eye(c)
    return w


def measure(shape: tuple[int, int, int, int], repeats: int) -> dict[str, float]:
    b, c, h, w = shape
    weight = make_weight(c)
    y = torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(1))
    reps = max(3, repeats // max(1, b * c // 64))
    with torch.inference_mode():
        x = tl_conv2d_solve(y, weight)
        error = (x - reference.tl_conv2d_solve(y, weight)).abs().max().item()
        return {
            "ours_ms": 1e3 * median_seconds(lambda: tl_conv2d_solve(y, weight), reps),
            "ours_transposed_ms": 1e3 * median_seconds(lambda: tl_conv2d_solve_transposed(y, weight), reps),
            "reference_ms": 1e3 * median_seconds(lambda: tl_conv2d_solve(y, weight, backend="torch"), reps),
            "conv_ms": 1e3 * median_seconds(lambda: F.conv2d(y, weight, padding=1), reps),
            "max_abs_diff_vs_reference": error,
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--threads", type=int, default=0, help="torch (and solve) threads; 0: default")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tune_malloc()
    backend = serving_backend("cpu")
    if backend != "cpu":
        print(
            f"the native CPU solve is unavailable: {cpu_backend.backend.unavailable_reason()}",
            file=sys.stderr,
        )
        return 2
    repeats = 20 if args.quick else 100
    rows = []
    for shape, published in tqdm(SHAPES.items(), desc="shapes"):
        idle = measure(shape, repeats)
        with busy_core():
            busy = measure(shape, repeats)
        b = shape[0]
        target = TARGET_B1 if b == 1 else TARGET_BATCH
        row = {
            "shape": "B{} C{} {}x{}".format(*shape),
            **idle,
            "ours_over_conv": idle["ours_ms"] / idle["conv_ms"],
            "reference_over_conv": idle["reference_ms"] / idle["conv_ms"],
            "published_over_conv": published,
            "target_over_conv": target,
            "busy_ours_ms": busy["ours_ms"],
            "busy_conv_ms": busy["conv_ms"],
            "busy_reference_ms": busy["reference_ms"],
            "busy_slowdown_ours": busy["ours_ms"] / idle["ours_ms"],
            "busy_slowdown_conv": busy["conv_ms"] / idle["conv_ms"],
            "busy_slowdown_reference": busy["reference_ms"] / idle["reference_ms"],
        }
        row["meets_target"] = row["ours_over_conv"] <= target and row["busy_slowdown_ours"] <= TARGET_BUSY
        rows.append(row)
    columns = [
        "shape", "ours_ms", "ours_transposed_ms", "reference_ms", "conv_ms", "ours_over_conv",
        "published_over_conv", "target_over_conv", "busy_slowdown_ours", "busy_slowdown_conv",
        "busy_slowdown_reference", "meets_target",
    ]  # fmt: skip
    print_table(rows, columns)
    path = write_results(
        "solve_cpu",
        rows,
        device=f"CPU, {torch.get_num_threads()} threads",
        lanes_per_vector=cpu_backend.lanes(),
        targets={"b1_over_conv": TARGET_B1, "batch_over_conv": TARGET_BATCH, "busy_slowdown": TARGET_BUSY},
        published="the FInC Flow authors' serial CPU inverse, its time over F.conv2d's on the same shape",
    )
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""CPU speed of `A⁻¹y`: the vectorised wavefront vs a per-pixel Python loop vs a dense solve.

    python benchmarks/solve_cpu.py [--quick]

Prints a table of median times and ratios and writes benchmarks/results/solve_cpu.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import median_seconds, print_table, write_results
from kernels_cuda import reference


def per_pixel_solve(y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The textbook baseline: raster order, one pixel per step (vectorised over batch and channels)."""
    b, c, h, w = y.shape
    k = weight.shape[-1]
    taps = weight.clone()
    taps[:, :, k - 1, k - 1] = 0
    taps = taps.reshape(c, c * k * k).T
    lower = torch.tril(weight[:, :, k - 1, k - 1])
    xp = torch.zeros(b, c, h + k - 1, w + k - 1, dtype=y.dtype)
    for i in range(h):
        for j in range(w):
            r = y[:, :, i, j] - xp[:, :, i : i + k, j : j + k].reshape(b, c * k * k) @ taps
            xp[:, :, i + k - 1, j + k - 1] = torch.linalg.solve_triangular(lower, r.T, upper=False).T
    return xp[:, :, k - 1 :, k - 1 :]


def per_pixel_per_channel_solve(y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The published kernel's order of work as a Python loop: pixel by pixel, channel by channel
    (forward substitution), vectorised over the batch only."""
    b, c, h, w = y.shape
    k = weight.shape[-1]
    xp = torch.zeros(b, c, h + k - 1, w + k - 1, dtype=y.dtype)
    flat = weight.reshape(c, c * k * k)
    for i in range(h):
        for j in range(w):
            patch = xp[:, :, i : i + k, j : j + k].reshape(b, c * k * k)
            for o in range(c):
                r = y[:, o, i, j] - patch @ flat[o]
                xp[:, o, i + k - 1, j + k - 1] = r / weight[o, o, k - 1, k - 1]
                patch = xp[:, :, i : i + k, j : j + k].reshape(b, c * k * k)
    return xp[:, :, k - 1 :, k - 1 :]


def dense_solve(y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Build the dense matrix `A` and LU-solve: only for sizes where (C·H·W)² floats fit."""
    b, c, h, w = y.shape
    n = c * h * w
    a = reference.tl_conv2d(torch.eye(n, dtype=y.dtype).reshape(n, c, h, w), weight).reshape(n, n).T
    return torch.linalg.solve(a, y.reshape(b, n).T).T.reshape_as(y)


def make_weight(c: int, k: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(c, c, k, k, generator=gen) * 0.05
    w[:, :, k - 1, k - 1] = torch.tril(w[:, :, k - 1, k - 1], -1) + torch.eye(c)
    return w


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    reps = 3 if args.quick else 15
    shapes = [(16, 16, 32, 32, 3), (16, 16, 16, 16, 3)]  # (B, C, H, W, k); dense fits the second only
    rows = []
    for b, c, h, w, k in tqdm(shapes, desc="shapes"):
        weight = make_weight(c, k)
        y = torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(1))
        x = reference.tl_conv2d_solve(y, weight)
        check = per_pixel_solve(y, weight)
        check2 = per_pixel_per_channel_solve(y[:2], weight)
        row = {
            "shape": f"B{b} C{c} {h}x{w} k{k}",
            "wavefront_ms": 1e3 * median_seconds(lambda: reference.tl_conv2d_solve(y, weight), reps),
            "per_pixel_ms": 1e3 * median_seconds(lambda: per_pixel_solve(y, weight), max(2, reps // 5)),
            "per_pixel_channel_ms": 1e3
            * median_seconds(lambda: per_pixel_per_channel_solve(y, weight), 1, 0),
            "conv_ms": 1e3 * median_seconds(lambda: reference.tl_conv2d(x, weight), reps),
            "max_abs_diff_vs_per_pixel": max(
                (x - check).abs().max().item(), (x[:2] - check2).abs().max().item()
            ),
        }
        if c * h * w <= 4096:
            row["dense_ms"] = 1e3 * median_seconds(lambda: dense_solve(y, weight), 1, warmup=0)
            row["speedup_vs_dense"] = row["dense_ms"] / row["wavefront_ms"]
        row["speedup_vs_per_pixel"] = row["per_pixel_ms"] / row["wavefront_ms"]
        row["speedup_vs_per_pixel_channel"] = row["per_pixel_channel_ms"] / row["wavefront_ms"]
        row["wavefront_over_conv"] = row["wavefront_ms"] / row["conv_ms"]
        rows.append(row)
    columns = [
        "shape",
        "wavefront_ms",
        "per_pixel_ms",
        "per_pixel_channel_ms",
        "dense_ms",
        "conv_ms",
        "speedup_vs_per_pixel",
        "speedup_vs_per_pixel_channel",
        "speedup_vs_dense",
        "wavefront_over_conv",
        "max_abs_diff_vs_per_pixel",
    ]
    print_table(rows, columns)
    print("wrote", write_results("solve_cpu", rows, target="wavefront >= 50x faster than per-pixel loop"))


if __name__ == "__main__":
    main()

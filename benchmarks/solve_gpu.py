"""GPU speed of `A⁻¹y`: our one-launch kernel vs the per-diagonal-per-channel baseline vs torch vs cuDNN conv.

    python benchmarks/solve_gpu.py [--quick]

(a) ours: kernels_cuda CUDA backend (one launch + two small folding ops)
(b) baseline: benchmarks/csrc/baseline_solve.cu, one launch and one device sync per diagonal and channel
(c) torch: the vectorised wavefront reference running on the GPU
(d) conv: cuDNN conv2d of the same shape, the floor
Prints a table of median times and ratios; writes benchmarks/results/solve_gpu.json.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import print_table, write_results
from kernels_cuda import cuda_backend, reference
from kernels_cuda.build import compile_library

SHAPES = [(8, 14, 14), (16, 7, 7), (12, 16, 16), (24, 8, 8), (48, 16, 16)]
BATCHES = [1, 16, 100, 256]


def load_baseline() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(compile_library(Path(__file__).parent / "csrc" / "baseline_solve.cu", "baseline")))
    lib.flows_baseline_solve_f32.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int] * 5 + [ctypes.c_void_p]
    lib.flows_baseline_solve_f32.restype = ctypes.c_int
    return lib


def gpu_median_ms(fn, repeats: int) -> float:
    """Median of CUDA-event timings after warm-up."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available() or not cuda_backend.available():
        sys.exit(f"needs a GPU and the CUDA kernels: {cuda_backend.unavailable_reason()}")
    baseline = load_baseline()
    reps = 10 if args.quick else 50
    rows = []
    k = 3
    for (c, h, w), b in tqdm([(s, b) for s in SHAPES for b in BATCHES], desc="shapes"):
        gen = torch.Generator(device="cuda").manual_seed(0)
        weight = torch.randn(c, c, k, k, device="cuda", generator=gen) * 0.05
        weight[:, :, k - 1, k - 1] = torch.tril(weight[:, :, k - 1, k - 1], -1) + torch.eye(c, device="cuda")
        y = torch.randn(b, c, h, w, device="cuda", generator=gen)
        out = torch.empty_like(y)
        stream = torch.cuda.current_stream().cuda_stream

        def run_baseline():
            code = baseline.flows_baseline_solve_f32(
                y.data_ptr(), weight.data_ptr(), out.data_ptr(), b, c, h, w, k, stream
            )
            if code:
                raise RuntimeError(f"baseline failed with CUDA error {code}")

        ours = cuda_backend.tl_conv2d_solve(y, weight)
        run_baseline()
        row = {
            "B": b,
            "CxHxW": f"{c}x{h}x{w}",
            "ours_ms": gpu_median_ms(lambda: cuda_backend.tl_conv2d_solve(y, weight), reps),
            "baseline_ms": gpu_median_ms(run_baseline, max(3, reps // 10)),
            "torch_ms": gpu_median_ms(lambda: reference.tl_conv2d_solve(y, weight), max(3, reps // 5)),
            "conv_ms": gpu_median_ms(lambda: reference.tl_conv2d(y, weight), reps),
            "max_abs_diff_vs_baseline": (ours - out).abs().max().item(),
        }
        row["baseline/ours"] = row["baseline_ms"] / row["ours_ms"]
        row["torch/ours"] = row["torch_ms"] / row["ours_ms"]
        row["ours/conv"] = row["ours_ms"] / row["conv_ms"]
        rows.append(row)
    cols = [
        "B",
        "CxHxW",
        "ours_ms",
        "baseline_ms",
        "torch_ms",
        "conv_ms",
        "baseline/ours",
        "torch/ours",
        "ours/conv",
        "max_abs_diff_vs_baseline",
    ]
    print_table(rows, cols)
    targets = "ours >= 10x baseline at B=1, >= 5x at B=100; ours within 3x of conv at B >= 100"
    print("wrote", write_results("solve_gpu", rows, targets=targets))


if __name__ == "__main__":
    main()

"""GPU speed of `A⁻¹y`, side by side in one run: our kernel vs the per-diagonal-per-channel baseline vs cuDNN.

    python benchmarks/solve_gpu.py [--quick] [--out DIR]
    python benchmarks/solve_gpu.py --dry-run      # no GPU: checks the harness on the CPU (host driver)

(a) ours: kernels_cuda `cuda` backend, frozen weight (fold cached): one allocation + one launch per call
(b) baseline: benchmarks/csrc/baseline_solve.cu, one launch and one device sync per diagonal *and* channel
    (the published FInC Flow launch pattern)
(c) conv: cuDNN conv2d of the same shape (`tl_conv2d`), the floor
(d) torch: the vectorised wavefront reference on the GPU
Times are medians of CUDA-event timings (GPU time) plus a synchronised wall time per call for ours (host
overhead included, what a B=1 caller pays). Writes benchmarks/results/solve_gpu_<device>.json.
Targets (issue 10): ours ≥ 10× faster than the baseline at B=1; ours ≤ 3× the conv at B ≥ 100.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import device_slug, median_seconds, print_table, write_results
from kernels_cuda import reference, tl_conv2d_solve
from kernels_cuda.build import compile_library

SHAPES = [(8, 14, 14), (12, 16, 16), (24, 8, 8), (48, 16, 16)]
BATCHES = [1, 100, 256]
KERNEL = 3
BASELINE_SOURCE = Path(__file__).parent / "csrc" / "baseline_solve.cu"
COLUMNS = [
    "B", "CxHxW", "ours_ms", "ours_wall_ms", "baseline_ms", "conv_ms", "torch_ms",
    "baseline/ours", "ours/conv", "max_abs_diff_vs_torch",
]  # fmt: skip
TARGETS = "ours >= 10x faster than the baseline at B=1; ours <= 3x the cuDNN conv at B >= 100"


def load_baseline() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(compile_library(BASELINE_SOURCE, "baseline")))
    lib.flows_baseline_solve_f32.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int] * 5 + [ctypes.c_void_p]
    lib.flows_baseline_solve_f32.restype = ctypes.c_int
    return lib


def gpu_median_ms(fn: Callable[[], object], repeats: int) -> float:
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


def cpu_median_ms(fn: Callable[[], object], repeats: int) -> float:
    return 1e3 * median_seconds(fn, repeats)


def make_problem(c: int, h: int, w: int, b: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A frozen (no grad) masked weight as training initialises it, and a standard normal right-hand side."""
    gen = torch.Generator(device=device).manual_seed(0)
    weight = torch.randn(c, c, KERNEL, KERNEL, device=device, generator=gen) * 0.05
    centre = weight[:, :, KERNEL - 1, KERNEL - 1]
    weight[:, :, KERNEL - 1, KERNEL - 1] = torch.tril(centre, -1) + torch.eye(c, device=device)
    return weight, torch.randn(b, c, h, w, device=device, generator=gen)


def measure(c: int, h: int, w: int, b: int, reps: int, baseline: ctypes.CDLL | None, dry_run: bool) -> dict:
    device = "cpu" if dry_run else "cuda"
    ours_backend = "cuda_host" if dry_run else "cuda"
    timer = cpu_median_ms if dry_run else gpu_median_ms
    weight, y = make_problem(c, h, w, b, device)
    ours = tl_conv2d_solve(y, weight, backend=ours_backend)
    want = reference.tl_conv2d_solve(y, weight)
    row = {
        "B": b,
        "CxHxW": f"{c}x{h}x{w}",
        "ours_ms": timer(lambda: tl_conv2d_solve(y, weight, backend=ours_backend), reps),
        "ours_wall_ms": cpu_median_ms(lambda: tl_conv2d_solve(y, weight, backend=ours_backend), reps),
        "conv_ms": timer(lambda: reference.tl_conv2d(y, weight), reps),
        "torch_ms": timer(lambda: reference.tl_conv2d_solve(y, weight), max(3, reps // 5)),
        "max_abs_diff_vs_torch": (ours - want).abs().max().item(),
    }
    if baseline is not None:
        out = torch.empty_like(y)
        stream = torch.cuda.current_stream().cuda_stream

        def run_baseline() -> None:
            code = baseline.flows_baseline_solve_f32(
                y.data_ptr(), weight.data_ptr(), out.data_ptr(), b, c, h, w, KERNEL, stream
            )
            if code:
                raise RuntimeError(f"baseline failed with CUDA error {code}")

        row["baseline_ms"] = gpu_median_ms(run_baseline, max(3, reps // 10))
        row["max_abs_diff_baseline_vs_torch"] = (out - want).abs().max().item()
        row["baseline/ours"] = row["baseline_ms"] / row["ours_ms"]
    row["ours/conv"] = row["ours_ms"] / row["conv_ms"]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--dry-run", action="store_true", help="no GPU: one small case on the host driver")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    if args.dry_run:
        cases, reps, baseline, device_name = [((8, 6, 5), 2)], 2, None, "cpu (dry run)"
        out = args.out or Path(tempfile.mkdtemp(prefix="solve_gpu_dry_"))
    else:
        import kernels_cuda

        if not torch.cuda.is_available() or kernels_cuda.prepare("cuda") != "cuda":
            from kernels_cuda import cuda_backend

            reason = cuda_backend.backend.unavailable_reason()
            print(f"needs a GPU and the CUDA kernels: {reason}", file=sys.stderr)
            return 2
        cases = [(s, b) for s in SHAPES for b in BATCHES]
        reps, baseline, out = (10 if args.quick else 50), load_baseline(), args.out
        device_name = torch.cuda.get_device_name()
    rows = []
    start = time.perf_counter()
    for (c, h, w), b in cases:
        rows.append(measure(c, h, w, b, reps, baseline, args.dry_run))
        print(f"  {c}x{h}x{w} B={b} done ({time.perf_counter() - start:.0f} s)", flush=True)
    print_table(rows, COLUMNS)
    path = write_results(
        f"solve_gpu_{device_slug(device_name)}", rows, directory=out, device=device_name, targets=TARGETS
    )
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

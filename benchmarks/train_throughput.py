"""Training throughput (images/s) per architecture at the shipped size, today's defaults against the
configuration before them, beside a bf16 channels-last convolution reference, in one run.

    python benchmarks/train_throughput.py [--rounds 5] [--threads N]

Each configuration runs the training loop's own step (`model.training.Trainer`: forward, backward,
gradient clipping, Adam, Polyak average) on MNIST batches; rounds interleave the configurations so that
a drifting machine affects them alike. The reference is a 128-channel 3×3 convolution, forward and
backward, bfloat16 channels-last: what the CPU's matrix units can do, so that runs on different days
compare as images/s per reference GFLOP/s. Target: ≥ 2.5× the earlier configuration's images/s for
FInC and Inverse-Flow. Writes benchmarks/results/train_throughput.json.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import print_table, write_results
from kernels_cuda.cpu_features import cpu_flags
from model.layers import dequantize
from model.malloc import tune_malloc
from model.train import build_parser
from model.training import Trainer

ARCHS = ("finc", "inverse_flow", "glow")
# The configuration before fast training (the CLI's defaults then) and today's defaults.
CONFIGS = {
    "before": {
        "batch": 64,
        "args": ["--subnet-precision", "float32", "--no-channels-last"],
        "solve": "torch",
    },
    "now": {"batch": 256, "args": [], "solve": None},
}
TARGET = 2.5
FEATURES = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx2", "fma")


@contextlib.contextmanager
def kernel_backend(name: str | None):
    """FLOWS_KERNELS for the block (None: the default choice)."""
    saved = os.environ.get("FLOWS_KERNELS")
    if name is None:
        os.environ.pop("FLOWS_KERNELS", None)
    else:
        os.environ["FLOWS_KERNELS"] = name
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("FLOWS_KERNELS", None)
        else:
            os.environ["FLOWS_KERNELS"] = saved


def trainer(arch: str, config: dict, out: Path) -> Trainer:
    argv = ["--arch", arch, "--dataset", "mnist", "--out", str(out), "--batch-size", str(config["batch"])]
    return Trainer(build_parser().parse_args([*argv, "--quiet", *config["args"]]))


def step_seconds(run: Trainer, steps: int, solve: str | None) -> float:
    """Seconds per training step over `steps` steps (after the warm-up of the first call)."""
    images = run.data.train
    batch = run.args.batch_size
    noise = torch.Generator().manual_seed(0)
    with kernel_backend(solve):
        start = time.perf_counter()
        for i in range(steps):
            x = dequantize(images[i * batch : (i + 1) * batch].float(), "uniform", noise)
            run._step(x, 1e-4, "benchmark")
        return (time.perf_counter() - start) / steps


def reference_gflops(repeats: int = 10) -> float:
    """GFLOP/s of a bf16 channels-last 128→128 3×3 convolution, forward and backward, batch 256 at 14×14."""
    conv = torch.nn.Conv2d(128, 128, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(256, 128, 14, 14).contiguous(memory_format=torch.channels_last).requires_grad_()
    flops = 3 * 2 * 256 * 14 * 14 * 128 * 128 * 9  # forward, input gradient, weight gradient

    def once() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(x)
        y.float().sum().backward()

    once()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return flops / statistics.median(times) / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=1024, help="images per timed round and configuration")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tune_malloc()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            (arch, name): trainer(arch, config, Path(tmp) / f"{arch}-{name}")
            for arch in ARCHS
            for name, config in CONFIGS.items()
        }
        for (_, name), run in runs.items():  # warm-up: ActNorm's initialisation, first-call costs
            step_seconds(run, 2, CONFIGS[name]["solve"])
        seconds: dict[tuple[str, str], list[float]] = {key: [] for key in runs}
        reference = []
        for _ in range(args.rounds):
            reference.append(reference_gflops(3))
            for (arch, name), run in runs.items():
                steps = max(2, args.images // CONFIGS[name]["batch"])
                seconds[(arch, name)].append(step_seconds(run, steps, CONFIGS[name]["solve"]))
    gflops = statistics.median(reference)
    for arch in ARCHS:
        row: dict = {"architecture": arch, "parameters": runs[(arch, "now")].flow.num_parameters()}
        for name, config in CONFIGS.items():
            per_step = statistics.median(seconds[(arch, name)])
            row[f"{name}_images_per_s"] = config["batch"] / per_step
            row[f"{name}_images_per_s_per_ref_tflops"] = row[f"{name}_images_per_s"] / (gflops / 1e3)
        row["speedup"] = row["now_images_per_s"] / row["before_images_per_s"]
        row["meets_target"] = row["speedup"] >= TARGET if arch != "glow" else None
        rows.append(row)
    print(f"reference: bf16 channels-last 128-channel 3x3 conv, forward+backward: {gflops:.0f} GFLOP/s")
    print_table(rows, ["architecture", "parameters", "before_images_per_s", "now_images_per_s", "speedup"])
    features = sorted(f for f in FEATURES if f in cpu_flags())
    path = write_results(
        "train_throughput",
        rows,
        device=f"CPU, {torch.get_num_threads()} threads",
        reference_gflops=gflops,
        cpu_features=features,
        configs={name: {**c, "args": " ".join(c["args"])} for name, c in CONFIGS.items()},
        target_speedup=TARGET,
    )
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

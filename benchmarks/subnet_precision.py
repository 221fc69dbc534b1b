"""Training in float32 against bfloat16 coupling networks (`model.train --subnet-precision`), side by side.

    python benchmarks/subnet_precision.py [--models checkpoints] [--threads 1] [--quality-steps 300]

1. Speed: one training step (batch 64, forward + backward + Adam) of every shipped checkpoint, the two
   precisions alternating in one process; the median of each and their ratio.
2. Mismatch: every shipped checkpoint's test bits/dim (the first 2,000 MNIST or Fashion-MNIST test images)
   evaluated with its coupling networks in bfloat16 against float32: how far the function trained in
   bfloat16 is from the one served.
3. Quality: the same small flow of each architecture (L=2, K=4, hidden 64) trained from the same seed on
   the same MNIST batches for `--quality-steps` steps in each precision by the training CLI, then its test
   bits/dim in float32 (the first 2,000 test images) and its training time.
Writes benchmarks/results/subnet_precision_{cpu|gpu}.json.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import print_table, write_results
from model import load_flow
from model.architectures import ARCHITECTURES
from model.checkpoint import read_config
from model.data import load_dataset
from model.evaluate import evaluate_bits_per_dim
from model.layers import subnets_in
from model.malloc import tune_malloc
from model.train import main as train_main
from model.training import SUBNET_DTYPES


def step_times(path: Path, device: torch.device, rounds: int) -> dict[str, float]:
    """Median seconds of one training step of the checkpoint at `path`, per precision, interleaved."""
    flow = load_flow(path, device=device).train()
    optimizer = torch.optim.Adam(flow.parameters(), lr=0.0)  # the work of a step, the weights unchanged
    x = torch.randint(0, 256, (64, *flow.config.image_shape), device=device).float()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step(dtype: torch.dtype) -> None:
        with subnets_in(dtype):
            loss = -flow.log_prob_continuous(x + torch.rand_like(x)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    times: dict[str, list[float]] = {name: [] for name in SUBNET_DTYPES}
    for dtype in SUBNET_DTYPES.values():
        step(dtype)  # warm-up (and ActNorm is initialised already: a trained checkpoint)
    for _ in range(rounds):
        for name, dtype in SUBNET_DTYPES.items():
            sync()
            start = time.perf_counter()
            step(dtype)
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


@functools.cache
def _test_images(dataset: str) -> torch.Tensor:
    """A dataset's test images, loaded once for all the checkpoints trained on it."""
    return load_dataset(dataset).test


def mismatch(path: Path, device: torch.device, images: int = 2000) -> dict[str, float | None]:
    """Test bits/dim of the checkpoint with its coupling networks in each precision (same images, noise);
    None where its dataset is not on this machine (a GPU machine without the carried data)."""
    flow = load_flow(path, device=device).eval()
    try:
        test = _test_images(read_config(path)["training"]["dataset"])[:images]
    except FileNotFoundError as e:
        print(f"{path.name}: no bits/dim ({e})")
        return dict.fromkeys(SUBNET_DTYPES)
    out = {}
    for name, dtype in SUBNET_DTYPES.items():
        with subnets_in(dtype):
            out[name] = evaluate_bits_per_dim(flow, test, device=device)
    return out


def train_small(arch: str, precision: str, steps: int, device: str, out: Path) -> dict[str, float]:
    """Train the small flow of `arch` for `steps` steps (one epoch) with the training CLI; its summary."""
    args = [
        "--arch", arch, "--dataset", "mnist", "--out", str(out), "--levels", "2", "--steps", "4",
        "--hidden", "64", "--epochs", "1", "--train-limit", str(64 * steps), "--eval-images", "2000",
        "--device", device, "--subnet-precision", precision, "--quiet",
    ]  # fmt: skip
    if train_main(args) != 0:
        raise RuntimeError(f"training {arch} in {precision} failed")
    training = read_config(out)["training"]
    return {"test_bits_per_dim": training["test_bits_per_dim"], "train_seconds": training["train_seconds"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=str(ROOT / "checkpoints"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (training runs use 1-2)")
    p.add_argument("--rounds", type=int, default=5, help="timed steps per precision and model")
    p.add_argument("--quality-steps", type=int, default=300, help="0: speed only")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = p.parse_args(argv)
    tune_malloc()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    speed = []
    for path in sorted(q for q in Path(args.models).iterdir() if (q / "config.json").is_file()):
        t = step_times(path, device, args.rounds)
        speed.append(
            {
                "model": path.name,
                "float32_ms": round(1e3 * t["float32"], 1),
                "bfloat16_ms": round(1e3 * t["bfloat16"], 1),
                "speedup": round(t["float32"] / t["bfloat16"], 2),
            }
        )
    for row in speed:
        bpd = mismatch(Path(args.models) / row["model"], device)
        if bpd["float32"] is not None:
            row |= {
                "float32_bpd": round(bpd["float32"], 5),
                "bfloat16_bpd": round(bpd["bfloat16"], 5),
                "bpd_mismatch": round(bpd["bfloat16"] - bpd["float32"], 5),
            }
    print_table(
        speed,
        ["model", "float32_ms", "bfloat16_ms", "speedup", "float32_bpd", "bfloat16_bpd", "bpd_mismatch"],
    )

    quality = []
    if args.quality_steps:
        with tempfile.TemporaryDirectory() as tmp:
            for arch in ARCHITECTURES:
                runs = {
                    precision: train_small(
                        arch, precision, args.quality_steps, args.device, Path(tmp) / precision
                    )
                    for precision in SUBNET_DTYPES
                }
                quality.append(
                    {
                        "arch": arch,
                        "steps": args.quality_steps,
                        "float32_bpd": round(runs["float32"]["test_bits_per_dim"], 4),
                        "bfloat16_bpd": round(runs["bfloat16"]["test_bits_per_dim"], 4),
                        "bpd_difference": round(
                            runs["bfloat16"]["test_bits_per_dim"] - runs["float32"]["test_bits_per_dim"], 4
                        ),
                        "float32_s": runs["float32"]["train_seconds"],
                        "bfloat16_s": runs["bfloat16"]["train_seconds"],
                    }
                )
        print_table(
            quality,
            ["arch", "steps", "float32_bpd", "bfloat16_bpd", "bpd_difference", "float32_s", "bfloat16_s"],
        )

    name = f"subnet_precision_{'gpu' if device.type == 'cuda' else 'cpu'}"
    path = write_results(
        name,
        speed,
        Path(args.out) if args.out else None,
        quality=quality,
        settings={"batch": 64, "rounds": args.rounds, "device": str(device)},
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Evaluate a checkpoint: `python -m model.evaluate CHECKPOINT [--device auto] [--grid samples.png]`.

Prints test bits/dim, sampling and scoring throughput (images/s) on the device, and writes a grid.
`--plot` only draws the learning curve from the checkpoint's training log (`learning_curve.png`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from .checkpoint import load_flow, read_config
from .curves import LOG_FILE, plot_learning_curve
from .data import load_dataset
from .flow import MultiScaleFlow
from .images import save_grid
from .scoring import bits_per_dim

__all__ = ["evaluate_bits_per_dim", "evaluate_iw_bits_per_dim", "main", "throughput"]

EVAL_SEED = 12345  # the dequantisation noise of every evaluation: the same images, the same number


@torch.no_grad()
def evaluate_bits_per_dim(
    flow: MultiScaleFlow, images: torch.Tensor, batch_size: int = 500, device: str | torch.device = "cpu"
) -> float:
    """Mean test bits/dim with uniform dequantisation noise (seeded), the number papers report; float32
    throughout, whatever precision training used."""
    was_training = flow.training
    flow.eval()
    total, count = 0.0, 0
    noise = torch.Generator(device=device).manual_seed(EVAL_SEED)
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size].to(device)
        total += flow.bits_per_dim(batch, dequantization="uniform", generator=noise).sum().item()
        count += batch.shape[0]
    flow.train(was_training)
    return total / count


def evaluate_iw_bits_per_dim(
    flow: MultiScaleFlow, images: torch.Tensor, samples: int = 64, device: str | torch.device = "cpu"
) -> float:
    """Mean test bits/dim of the importance-weighted bound `log mean_k p(x + u_k)` over K = `samples`
    hashed noise draws (docs/math.md §5): tighter than the uniform bound, K times its compute."""
    was_training = flow.training
    flow.eval()
    total = 0.0
    with torch.no_grad():
        for batch in images.split(max(1, 512 // samples)):
            log_prob = flow.log_prob(batch.to(device), dequantization="hashed", samples=samples)
            total += bits_per_dim(log_prob, flow.num_dims).sum().item()
    flow.train(was_training)
    return total / images.shape[0]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def throughput(fn, batch: int, device: torch.device, min_seconds: float = 2.0) -> float:
    """Images per second of `fn()` producing `batch` images, after one warm-up call."""
    fn()
    _sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        fn()
        _sync(device)
        count += batch
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m model.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--device", default="auto")
    p.add_argument("--dataset", default=None, help="defaults to the checkpoint's training dataset")
    p.add_argument("--test-images", type=int, default=0, help="0: the whole test set")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--grid", default=None, help="sample grid PNG (default: CHECKPOINT/eval_samples.png)")
    p.add_argument(
        "--write-config", action="store_true", help="store the measured test bits/dim in config.json"
    )
    p.add_argument(
        "--iw-images",
        type=int,
        default=0,
        help="also the importance-weighted bound at K = 64 on this many test images (0: not measured)",
    )
    p.add_argument("--plot", action="store_true", help="only draw CHECKPOINT/learning_curve.png from its log")
    args = p.parse_args(argv)
    if args.plot:
        path = plot_learning_curve(args.checkpoint)
        print(path if path else f"{args.checkpoint} has no {LOG_FILE}: nothing to plot", file=sys.stderr)
        return 0 if path else 1

    device = torch.device(
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    flow = load_flow(args.checkpoint, device=device)
    dataset = args.dataset or read_config(args.checkpoint)["training"].get("dataset", "mnist")
    test = load_dataset(dataset).test
    if args.test_images:
        test = test[: args.test_images]
    bpd = evaluate_bits_per_dim(flow, test, batch_size=args.batch_size, device=device)
    gen = torch.Generator(device).manual_seed(0)
    batch = test[: args.batch_size].to(device)
    result = {
        "checkpoint": str(args.checkpoint),
        "architecture": flow.config.arch,
        "device": str(device),
        "test_images": int(test.shape[0]),
        "test_bits_per_dim": round(bpd, 4),
        "batch_size": args.batch_size,
        "sampling_images_per_s": round(
            throughput(lambda: flow.sample(args.batch_size, args.temperature, gen), args.batch_size, device),
            1,
        ),
        "scoring_images_per_s": round(throughput(lambda: flow.log_prob(batch), batch.shape[0], device), 1),
    }
    if args.iw_images:
        iw_images = test[: args.iw_images]
        result["test_bits_per_dim_iw64"] = round(evaluate_iw_bits_per_dim(flow, iw_images, 64, device), 4)
        result["test_bits_per_dim_uniform_same_images"] = round(
            evaluate_bits_per_dim(flow, iw_images, batch_size=args.batch_size, device=device), 4
        )
    grid = Path(args.grid) if args.grid else Path(args.checkpoint) / "eval_samples.png"
    with torch.inference_mode():
        save_grid(flow.sample(64, args.temperature, torch.Generator(device).manual_seed(1)), grid, nrow=8)
    result["grid"] = str(grid)
    if args.write_config:
        path = Path(args.checkpoint) / "config.json"
        config = json.loads(path.read_text())
        config["training"].update(test_bits_per_dim=bpd, test_images=int(test.shape[0]))
        if args.iw_images:
            config["training"]["importance_weighted_bound"] = {
                "samples": 64,
                "test_images": int(min(args.iw_images, test.shape[0])),
                "bits_per_dim": result["test_bits_per_dim_iw64"],
                "uniform_bits_per_dim_same_images": result["test_bits_per_dim_uniform_same_images"],
            }
        path.write_text(json.dumps(config, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

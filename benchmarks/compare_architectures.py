"""The papers' comparison for the shipped checkpoints side by side: size, bits/dim, training and serving cost.

    python benchmarks/compare_architectures.py [--models checkpoints] [--device cpu|cuda] [--quick]

Per checkpoint: parameters, test bits/dim (as measured on the full test set at training time and stored in
`config.json`), training time per epoch (and the hardware it ran on), and the median time to sample 100
images and to score 100 test images as the service runs them (`ServedModel` on torch: channels-last
coupling networks, the native solve on a CPU, the CUDA kernels on a GPU), sampling also with `--precision
bf16`, and all of it again beside a process spinning on one core (the slowdowns). The ratios to Glow's
times are the papers' comparison: targets FInC sampling ≤ 1.1× Glow's, Inverse-Flow scoring ≤ 1.2×, and a
busy core slowing each by ≤ 1.5×. Prints a Markdown table next to the published figures and writes
`benchmarks/results/compare_architectures_<device>.json`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `python -m service` runs (service/runtime.py)

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import busy_core, median_seconds, write_results
from model import read_config
from model.architectures import get_architecture
from model.data import load_dataset
from model.hardware import hardware_name
from model.malloc import tune_malloc
from service.model_api import ServedModel


def _times(checkpoint: Path, device: torch.device, images: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median ms of sampling 100 images (float32 and bf16 coupling networks) and scoring 100 images."""
    served = ServedModel.load(checkpoint, device, "torch")
    fast = ServedModel.load(checkpoint, device, "torch", precision="bf16")
    latents = served.draw_latents(100, 0.7, seed=0)
    with torch.inference_mode():
        return {
            "sample_100_ms": 1e3 * median_seconds(lambda: served.decode(latents), repeats),
            "sample_100_bf16_ms": 1e3 * median_seconds(lambda: fast.decode(latents), repeats),
            "score_100_ms": 1e3 * median_seconds(lambda: served.logprob(images), repeats),
        }


def measure(checkpoint: Path, device: torch.device, repeats: int) -> dict:
    """One row of the comparison for `checkpoint` on `device`."""
    config = read_config(checkpoint)
    training = config["training"]
    data = load_dataset(training.get("dataset", "mnist"))
    images = data.test[:100]
    idle = _times(checkpoint, device, images, repeats)
    with busy_core():
        busy = _times(checkpoint, device, images, repeats)
    flow = ServedModel.load(checkpoint, device, "torch").flow
    epochs = training.get("epochs") or 0
    return {
        "checkpoint": checkpoint.name,
        "architecture": flow.config.arch,
        "dataset": training.get("dataset"),
        "parameters": flow.num_parameters(),
        "levels×steps, hidden": f"{flow.config.levels}×{flow.config.steps}, {flow.config.hidden}",
        "test_bits_per_dim": training.get("test_bits_per_dim"),
        "epochs": epochs,
        "train_minutes_per_epoch": round(training["train_seconds"] / 60 / epochs, 1) if epochs else None,
        "trained_on": training.get("device"),
        **{k: round(v, 1) for k, v in idle.items()},
        **{f"busy_{k}": round(v, 1) for k, v in busy.items()},
        **{f"busy_slowdown_{k.removesuffix('_ms')}": round(busy[k] / idle[k], 2) for k in idle},
        # published test bits/dim (uniform dequantisation) and model size, from the architecture's spec
        "published": get_architecture(flow.config.arch).published.get(training.get("dataset"), "-"),
    }


def markdown(rows: list[dict]) -> str:
    """The comparison as a Markdown table (docs/performance.md embeds it)."""
    head = "| checkpoint | params | L×K, hidden | test bits/dim | epochs | min/epoch (hardware) | "
    head += "sample 100 (bf16) | score 100 | busy core: sample, score | published |\n"
    head += "| --- | ---: | --- | ---: | ---: | --- | ---: | ---: | ---: | --- |"
    lines = [head]
    for r in rows:
        bpd = f"{r['test_bits_per_dim']:.3f}" if r["test_bits_per_dim"] is not None else "-"
        lines.append(
            f"| `{r['checkpoint']}` | {r['parameters']:,} | {r['levels×steps, hidden']} | {bpd} | "
            f"{r['epochs']} | {r['train_minutes_per_epoch']} ({r['trained_on']}) | {r['sample_100_ms']} ms "
            f"({r['sample_100_bf16_ms']} ms) | {r['score_100_ms']} ms | ×{r['busy_slowdown_sample_100']}, "
            f"×{r['busy_slowdown_score_100']} | {r['published']} |"
        )
    return "\n".join(lines)


def ratios_to_glow(rows: list[dict]) -> dict[str, float]:
    """The papers' comparison: FInC sampling and Inverse-Flow scoring over Glow's, same dataset."""
    by_arch = {(r["architecture"], r["dataset"]): r for r in rows}
    glow = by_arch.get(("glow", "mnist"))
    if glow is None:
        return {}
    out = {}
    for arch, key in (
        ("finc", "sample_100_ms"),
        ("finc", "sample_100_bf16_ms"),
        ("inverse_flow", "score_100_ms"),
    ):
        row = by_arch.get((arch, "mnist"))
        if row is not None:
            out[f"{arch}_{key.removesuffix('_ms')}_over_glow"] = round(row[key] / glow[key], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=str(Path(__file__).resolve().parents[1] / "checkpoints"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="3 repeats instead of 10")
    args = parser.parse_args()
    device = torch.device(args.device)
    tune_malloc()  # as the service and training run
    checkpoints = sorted(p for p in Path(args.models).iterdir() if (p / "config.json").is_file())
    rows = []
    for checkpoint in checkpoints:
        rows.append(measure(checkpoint, device, 3 if args.quick else 10))
        print(f"measured {checkpoint.name}", file=sys.stderr, flush=True)
    print(markdown(rows))
    ratios = ratios_to_glow(rows)
    print("\n" + ", ".join(f"{k} {v}" for k, v in ratios.items()))
    path = write_results(
        f"compare_architectures_{device.type}", rows, device=hardware_name(device), ratios_to_glow=ratios
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

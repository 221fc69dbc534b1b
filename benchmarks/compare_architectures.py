"""The papers' comparison for the shipped checkpoints side by side: size, bits/dim, training and serving cost.

    python benchmarks/compare_architectures.py [--models checkpoints] [--device cpu|cuda] [--quick]

Per checkpoint: parameters, test bits/dim (as measured on the full test set at training time and stored in
`config.json`), training time per epoch (and the hardware it ran on), and the median time to sample 100
images and to score 100 test images on the device (torch; on a GPU the CUDA kernels when they build).
Prints a Markdown table next to the published figures and writes
`benchmarks/results/compare_architectures_<device>.json`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import median_seconds, write_results
from model import load_flow, read_config
from model.architectures import get_architecture
from model.data import load_dataset
from model.hardware import hardware_name
from model.malloc import tune_malloc


def measure(checkpoint: Path, device: torch.device, repeats: int) -> dict:
    """One row of the comparison for `checkpoint` on `device`."""
    config = read_config(checkpoint)
    training = config["training"]
    flow = load_flow(checkpoint, device=device)
    data = load_dataset(training.get("dataset", "mnist"))
    batch = data.test[:100].to(device)
    gen = torch.Generator(device).manual_seed(0)
    with torch.inference_mode():
        sample_s = median_seconds(lambda: flow.sample(100, 0.7, gen), repeats)
        score_s = median_seconds(lambda: flow.log_prob(batch), repeats)
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
        "sample_100_ms": round(1000 * sample_s, 1),
        "score_100_ms": round(1000 * score_s, 1),
        # published test bits/dim (uniform dequantisation) and model size, from the architecture's spec
        "published": get_architecture(flow.config.arch).published.get(training.get("dataset"), "-"),
    }


def markdown(rows: list[dict]) -> str:
    """The comparison as a Markdown table (docs/performance.md embeds it)."""
    head = "| checkpoint | params | L×K, hidden | test bits/dim | epochs | min/epoch (hardware) | "
    head += "sample 100 | score 100 | published |\n"
    head += "| --- | ---: | --- | ---: | ---: | --- | ---: | ---: | --- |"
    lines = [head]
    for r in rows:
        bpd = f"{r['test_bits_per_dim']:.3f}" if r["test_bits_per_dim"] is not None else "-"
        lines.append(
            f"| `{r['checkpoint']}` | {r['parameters']:,} | {r['levels×steps, hidden']} | {bpd} | "
            f"{r['epochs']} | {r['train_minutes_per_epoch']} ({r['trained_on']}) | {r['sample_100_ms']} ms | "
            f"{r['score_100_ms']} ms | {r['published']} |"
        )
    return "\n".join(lines)


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
    path = write_results(f"compare_architectures_{device.type}", rows, device=hardware_name(device))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

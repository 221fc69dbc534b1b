"""What `--resume` continues from: one safetensors file, written beside the old one and renamed over it.

The file holds the optimizer's tensors, the checkpoint's weights (the Polyak average with `--ema-decay`,
else the live ones), the live weights (EMA only), and the run's progress as JSON metadata, so a run
killed at any moment resumes from the last complete state, whichever of the other files (served weights,
config, log, grids) had been rewritten since.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .schedule import Schedule

__all__ = ["STATE_TENSORS", "Progress", "TrainState", "read_train_state", "save_train_state"]

STATE_TENSORS = "train_state.safetensors"


@dataclass
class Progress:
    """Counters and history of a run; `batch` is the next batch of epoch `epoch` (0-based)."""

    epoch: int = 0
    batch: int = 0
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    epoch_loss_sum: float = 0.0
    epoch_loss_count: int = 0
    schedule: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Progress:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def planned(self) -> Schedule | None:
        return Schedule.from_dict(self.schedule) if self.schedule else None


@dataclass
class TrainState:
    """A saved run: progress, the checkpoint's weights, the live weights (EMA only), optimizer state."""

    progress: Progress
    param_groups: list[dict[str, Any]]
    weights: dict[str, torch.Tensor]
    live: dict[str, torch.Tensor] | None
    optimizer: dict[str, torch.Tensor]

    @property
    def meta(self) -> dict[str, Any]:
        """The progress as the plain dict stored in the file."""
        return asdict(self.progress)

    def load_optimizer(self, optimizer: torch.optim.Optimizer, device: torch.device) -> None:
        state: dict[int, dict[str, torch.Tensor]] = {}
        for name, value in self.optimizer.items():
            idx, key = name.split(".", 1)
            state.setdefault(int(idx), {})[key] = value if key == "step" else value.to(device)
        optimizer.load_state_dict({"state": state, "param_groups": self.param_groups})


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def save_train_state(
    out: Path,
    optimizer: torch.optim.Optimizer,
    progress: Progress,
    weights: torch.nn.Module,
    live: torch.nn.Module | None,
) -> None:
    """Everything `--resume` needs, in one file replaced atomically (the commit point of a checkpoint)."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, param_state in state["state"].items():
        for key, value in param_state.items():
            tensors[f"optimizer/{idx}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors.update({f"weights/{k}": v for k, v in _tensors(weights).items()})
    if live is not None:
        tensors.update({f"live/{k}": v for k, v in _tensors(live).items()})
    meta = {**asdict(progress), "param_groups": state["param_groups"]}
    tmp = out / (STATE_TENSORS + ".tmp")
    save_file(tensors, str(tmp), metadata={"meta": json.dumps(meta)})
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    tmp.replace(out / STATE_TENSORS)


def read_train_state(out: Path) -> TrainState:
    """The resumable state in `out`; a file without its metadata is refused with the reason."""
    path = Path(out) / STATE_TENSORS
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata() or {}
    if "meta" not in metadata:
        raise ValueError(
            f"{path} has no run metadata (a layout this version does not read): "
            "continue from the checkpoint with --init-from instead of --resume"
        )
    tensors = load_file(str(path))

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    meta = json.loads(metadata["meta"])
    return TrainState(
        progress=Progress.from_dict(meta),
        param_groups=meta["param_groups"],
        weights=part("weights/"),
        live=part("live/") or None,
        optimizer=part("optimizer/"),
    )

"""The learning-rate schedule of a run, planned once when the run starts and stored in its state."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = ["Schedule"]


@dataclass(frozen=True)
class Schedule:
    """Linear warm-up over `warmup_steps` from `start_step`, then constant or cosine decay to
    `lr * min_lr_ratio` at `end_step`. `epochs` is the epoch count the plan was made for: a resume that
    asks for another count plans anew from where the run stands (a restart, logged as one)."""

    lr: float
    kind: Literal["cosine", "constant"]
    min_lr_ratio: float
    warmup_steps: int
    start_step: int
    end_step: int
    epochs: int

    def lr_at(self, step: int) -> float:
        warmup = min(1.0, (step - self.start_step + 1) / max(1, self.warmup_steps))
        if self.kind == "constant":
            return self.lr * warmup
        decay_start = self.start_step + self.warmup_steps
        progress = min(1.0, max(0.0, (step - decay_start) / max(1, self.end_step - decay_start)))
        decay = self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return self.lr * warmup * decay

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schedule:
        return cls(**data)

"""Polyak (exponential moving average) weights: what the checkpoint holds with `--ema-decay`."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["PolyakAverage"]


class PolyakAverage:
    """An exponential moving average of a flow's parameters; buffers (ActNorm's flag, masks) are copied.

    The decay ramps up as `min(decay, (1 + step) / (10 + step))`, so that the average forgets the
    random initialisation within the first few hundred steps instead of carrying `decay^step` of it.
    """

    def __init__(self, flow: nn.Module, decay: float):
        self.module = copy.deepcopy(flow)
        self.decay = decay

    @torch.no_grad()
    def update(self, flow: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        averaged, live = list(self.module.parameters()), list(flow.parameters())
        torch._foreach_lerp_(averaged, live, 1.0 - decay)
        for mine, theirs in zip(self.module.buffers(), flow.buffers(), strict=True):
            mine.copy_(theirs)

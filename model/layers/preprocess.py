"""Dequantisation and the logit map from `[0, 256)` pixel space to `ℝ` (RealNVP), with exact log-dets.

`log p(x)` of a discrete image is the flow's density of the dequantised image in `[0, 256)^D` (unit
bins), so bits/dim come out in the units the literature reports: `-log p(x) / (D · ln 2)`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from .base import FlowLayer

__all__ = ["LogitTransform", "dequantize"]

Dequantization = Literal["uniform", "midpoint"]


def dequantize(
    x: torch.Tensor, mode: Dequantization = "midpoint", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Integer pixels in `[0, 255]` → continuous values in `[0, 256)`: `+U[0, 1)` or `+0.5`."""
    if mode == "midpoint":
        return x + 0.5
    if mode == "uniform":
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return x + noise
    raise ValueError(f"unknown dequantization {mode!r}; expected 'uniform' or 'midpoint'")


class LogitTransform(FlowLayer):
    """`y = logit(α + (1 - 2α) · x / 256)` for `x ∈ [0, 256)`; the inverse maps back to `[0, 256)`."""

    def __init__(self, alpha: float = 0.05, num_bins: int = 256):
        super().__init__()
        if not 0 <= alpha < 0.5:
            raise ValueError(f"alpha must be in [0, 0.5), got {alpha}")
        self.alpha, self.num_bins = alpha, num_bins

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.alpha + (1 - 2 * self.alpha) * x / self.num_bins
        y = torch.log(p) - torch.log1p(-p)
        per_dim = math.log(1 - 2 * self.alpha) - math.log(self.num_bins)
        logdet = (-torch.log(p) - torch.log1p(-p)).flatten(1).sum(1) + per_dim * x[0].numel()
        return y, logdet

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(y)
        return (p - self.alpha) / (1 - 2 * self.alpha) * self.num_bins

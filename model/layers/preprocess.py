"""Dequantisation and the logit map from `[0, 256)` pixel space to `ℝ` (RealNVP), with exact log-dets.

With unit bins, `E_u[log p(x + u)]` (`u ~ U[0, 1)^D`) is a lower bound on the log-probability of the
discrete image `x`, and `-log p / (D · ln 2)` is the bits/dim the literature reports.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from .base import FlowLayer

__all__ = ["FIXED_NOISE_SEED", "LogitTransform", "dequantize", "fixed_noise"]

Dequantization = Literal["uniform", "fixed", "midpoint"]
FIXED_NOISE_SEED = 0


def fixed_noise(shape: tuple[int, ...]) -> torch.Tensor:
    """One `U[0, 1)` pattern of an image's shape, the same on every machine (seeded CPU generator)."""
    return torch.rand(shape, generator=torch.Generator().manual_seed(FIXED_NOISE_SEED), dtype=torch.float64)


def dequantize(
    x: torch.Tensor,
    mode: Dequantization = "fixed",
    generator: torch.Generator | None = None,
    pattern: torch.Tensor | None = None,
) -> torch.Tensor:
    """Integer pixels in `[0, 255]` → continuous values in `[0, 256)`.

    - `uniform`: `+U[0, 1)` drawn from `generator`: the standard variational bound (training, papers).
    - `fixed`: `+` one fixed `U[0, 1)` pattern (`pattern`, else `fixed_noise`): the same estimator, but
      deterministic and independent of batching; its mean over a test set matches `uniform`.
    - `midpoint`: `+0.5`. Not a bound and not comparable to published bits/dim (it can be far lower on
      data with many saturated pixels, such as MNIST); kept for diagnostics.
    """
    if mode == "uniform":
        return x + torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    if mode == "fixed":
        noise = pattern if pattern is not None else fixed_noise(tuple(x.shape[1:]))
        return x + noise.to(dtype=x.dtype, device=x.device)
    if mode == "midpoint":
        return x + 0.5
    raise ValueError(f"unknown dequantization {mode!r}; expected 'uniform', 'fixed' or 'midpoint'")


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

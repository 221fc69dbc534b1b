"""Multi-scale split with a learned Gaussian prior, written as a bijection.

Glow factors out half the channels `x₂` with a prior `N(μ(x₁), σ(x₁)²)`. Standardising
`ε = (x₂ - μ(x₁)) / σ(x₁)` is an invertible affine map with `logdet = -Σ log σ`, after which `ε` is
standard normal: the same density, but the layer keeps the one contract, and temperature scales `ε`.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import FlowLayer

__all__ = ["Split"]


class Split(FlowLayer):
    """`y = [x₁, (x₂ - μ(x₁)) · exp(-log σ(x₁))]`; the model factors `y[:, split:]` out as a latent."""

    def __init__(self, channels: int):
        super().__init__()
        if channels < 2:
            raise ValueError("Split needs at least 2 channels")
        self.split = channels // 2
        out = channels - self.split
        self.prior = nn.Conv2d(self.split, 2 * out, kernel_size=3, padding=1)
        nn.init.zeros_(self.prior.weight)
        nn.init.zeros_(self.prior.bias)

    def _mean_log_std(self, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.prior(x1)
        return h[:, 0::2], h[:, 1::2]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x1, x2 = x[:, : self.split], x[:, self.split :]
        mean, log_std = self._mean_log_std(x1)
        eps = (x2 - mean) * torch.exp(-log_std)
        return torch.cat([x1, eps], dim=1), -log_std.flatten(1).sum(1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        x1, eps = y[:, : self.split], y[:, self.split :]
        mean, log_std = self._mean_log_std(x1)
        return torch.cat([x1, mean + eps * torch.exp(log_std)], dim=1)

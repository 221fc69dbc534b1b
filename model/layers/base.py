"""The one contract every flow layer follows.

Direction: `forward` maps data → latent, `inverse` maps latent → data.
`forward(x) -> (y, logdet)` where `logdet = log|det ∂y/∂x|` per sample, shape `(B,)`, on `x`'s device
and dtype; `inverse(y) -> x` exactly undoes `forward`. The model's log-density is
`log p(x) = log p(z) + Σ_layers logdet`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["FlowLayer", "FlowSequence", "zero_logdet"]


def zero_logdet(x: torch.Tensor) -> torch.Tensor:
    """A zero log-determinant of shape `(B,)` on `x`'s device and dtype."""
    return x.new_zeros(x.shape[0])


class FlowLayer(nn.Module):
    """Base class of invertible layers: see the module docstring for the contract."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def inverse(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class FlowSequence(FlowLayer):
    """Layers applied in order; log-determinants add up, the inverse runs in reverse."""

    def __init__(self, layers: Iterable[FlowLayer]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = zero_logdet(x)
        for layer in self.layers:
            x, ld = layer(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        for layer in reversed(self.layers):
            y = layer.inverse(y)
        return y

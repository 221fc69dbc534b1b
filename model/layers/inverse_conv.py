"""Inverse-Flow layers: the FInC solve in the data → latent direction (docs/math.md §3).

Sampling (latent → data) is then plain convolutions; training backpropagates through the solve.
"""

from __future__ import annotations

import torch

from .base import FlowSequence
from .finc import InitGenerator, _TriangularConvLayer

__all__ = ["InverseConv2d", "InverseConvUnit"]


class InverseConv2d(_TriangularConvLayer):
    """`z = A⁻¹ x` (wavefront solve), `logdet = -H·W·Σ_o s_o`; inverse is the conv `x = A z`. One
    orientation: `tl`, `tr`, `bl` or `br`."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._solve(x), -self._logdet(x)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return self._conv(y)


class InverseConvUnit(FlowSequence):
    """The four orientations chained: TL, TR, BL, BR inverse convolutions over all channels."""

    def __init__(
        self, channels: int, kernel_size: int, learn_diagonal: bool = True, generator: InitGenerator = None
    ):
        orientations = ("tl", "tr", "bl", "br")
        super().__init__(
            InverseConv2d(channels, kernel_size, o, learn_diagonal, generator) for o in orientations
        )

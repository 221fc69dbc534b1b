"""FInC Flow layers: the masked k×k convolution in the data → latent direction (docs/math.md §1–2)."""

from __future__ import annotations

import torch

from kernels_cuda import tl_conv2d, tl_conv2d_solve

from .base import FlowLayer
from .triangular import ORIENTATIONS, TriangularKernel, orient

__all__ = ["FInCConv2d", "FInCUnit"]

InitGenerator = torch.Generator | None  # seeds the initial weights (tests); None: torch's global generator


class _TriangularConvLayer(FlowLayer):
    """A TL convolution on channel groups, each flipped into its own orientation: one `orientation`
    (`tl`, `tr`, `bl` or `br`) for all channels, or a tuple of them, one per group."""

    def __init__(
        self,
        channels: int,
        kernel_size: int,
        orientation: str | tuple[str, ...] = "tl",
        learn_diagonal: bool = True,
        generator: InitGenerator = None,
    ):
        super().__init__()
        orientations = (orientation,) if isinstance(orientation, str) else tuple(orientation)
        for o in orientations:
            if o not in ORIENTATIONS:
                raise ValueError(f"unknown orientation {o!r}; expected one of {tuple(ORIENTATIONS)}")
        self.orientations = orientations
        self.kernel = TriangularKernel(
            channels, kernel_size, len(orientations), learn_diagonal, generator=generator
        )

    @property
    def weight(self) -> torch.Tensor:
        """The masked kernel, `(C, C/groups, k, k)`, in each group's top-left frame."""
        return self.kernel.weight

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        o = self.orientations
        return orient(tl_conv2d(orient(x, o), self.weight, len(o)), o)

    def _solve(self, y: torch.Tensor) -> torch.Tensor:
        o = self.orientations
        return orient(tl_conv2d_solve(orient(y, o), self.weight, len(o)), o)

    def _logdet(self, x: torch.Tensor) -> torch.Tensor:
        ld = (x.shape[2] * x.shape[3]) * self.kernel.logdet_per_pixel()
        return ld.expand(x.shape[0]).to(x.dtype)


class _FInCLayer(_TriangularConvLayer):
    """Forward is the masked conv (`y = A x`), inverse the wavefront solve."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._conv(x), self._logdet(x)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return self._solve(y)


class FInCConv2d(_FInCLayer):
    """FInC convolution in one orientation: `tl`, `tr`, `bl` or `br`."""


class FInCUnit(_FInCLayer):
    """Four channel groups, one orientation each (TL, TR, BL, BR), as one grouped conv and one solve."""

    def __init__(
        self, channels: int, kernel_size: int, learn_diagonal: bool = True, generator: InitGenerator = None
    ):
        if channels % 4:
            raise ValueError(f"FInCUnit needs channels divisible by 4, got {channels}")
        super().__init__(channels, kernel_size, ("tl", "tr", "bl", "br"), learn_diagonal, generator)

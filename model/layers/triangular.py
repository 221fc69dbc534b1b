"""The masked k×k kernel shared by FInC and Inverse-Flow layers, and the orientation flips."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ORIENTATIONS", "TriangularKernel", "orient"]

# Which image axes to flip so that an orientation becomes top-left (docs/math.md §1).
ORIENTATIONS: dict[str, tuple[int, ...]] = {"tl": (), "tr": (3,), "bl": (2,), "br": (2, 3)}


def orient(x: torch.Tensor, orientations: Sequence[str]) -> torch.Tensor:
    """Flip each of `len(orientations)` channel groups of `x` into top-left position (self-inverse)."""
    if all(o == "tl" for o in orientations):
        return x
    if len(orientations) == 1:
        dims = ORIENTATIONS[orientations[0]]
        return torch.flip(x, dims) if dims else x
    chunks = x.chunk(len(orientations), dim=1)
    flipped = [
        torch.flip(c, ORIENTATIONS[o]) if ORIENTATIONS[o] else c
        for c, o in zip(chunks, orientations, strict=True)
    ]
    return torch.cat(flipped, dim=1)


class TriangularKernel(nn.Module):
    """A `(C, C/groups, k, k)` kernel whose centre tap is lower triangular with diagonal `exp(log_diag)`.

    Off-centre taps are free; the centre's strictly-lower part is free; its upper part is zero.
    With `learn_diagonal=False` the diagonal is fixed to 1 (the published FInC Flow setting).
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int,
        groups: int = 1,
        learn_diagonal: bool = True,
        init_std: float = 0.05,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be ≥ 1, got {kernel_size}")
        if channels % groups:
            raise ValueError(f"{channels} channels do not split into {groups} groups")
        cg, k = channels // groups, kernel_size
        self.groups, self.kernel_size = groups, kernel_size
        raw = torch.randn(channels, cg, k, k, generator=generator) * init_std
        self.raw = nn.Parameter(raw)
        mask = torch.ones(channels, cg, k, k)
        mask[:, :, k - 1, k - 1] = torch.tril(torch.ones(cg, cg), -1).repeat(groups, 1)
        self.register_buffer("mask", mask)
        self.register_buffer("diag_index", torch.arange(channels) % cg)
        log_diag = torch.zeros(channels)
        if learn_diagonal:
            self.log_diag = nn.Parameter(log_diag)
        else:
            self.register_buffer("log_diag", log_diag)

        self._frozen_weight: torch.Tensor | None = None

    def freeze(self, frozen: bool = True) -> None:
        """Cache the masked kernel as one tensor for inference, so the solve kernels' folded weights (cached
        per weight tensor and version, kernels_cuda/folding.py) are computed once. Freeze after moving the
        module to its device and dtype; `freeze(False)` undoes it."""
        with torch.no_grad():
            self._frozen_weight = self._masked().detach() if frozen else None

    @property
    def weight(self) -> torch.Tensor:
        """The masked kernel `(C, C/groups, k, k)` actually applied (top-left frame)."""
        if self._frozen_weight is not None:
            return self._frozen_weight
        return self._masked()

    def _masked(self) -> torch.Tensor:
        k = self.kernel_size
        w = self.raw * self.mask
        rows = torch.arange(w.shape[0], device=w.device)
        centre = torch.zeros_like(w)
        centre[rows, self.diag_index, k - 1, k - 1] = torch.exp(self.log_diag).to(w.dtype)
        return w + centre

    def logdet_per_pixel(self) -> torch.Tensor:
        """`Σ_o log L[o, o]`, the log-determinant contributed by each pixel."""
        return self.log_diag.sum()

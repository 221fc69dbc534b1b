"""Triangular (FInC) convolution ops behind one interface, whatever the backend.

`tl_conv2d` is `A x` (cuDNN / ATen conv), `tl_conv2d_solve` is `A⁻¹ y` and `tl_conv2d_solve_transposed`
is `A⁻ᵀ g`; both solves are differentiable in their input and weight. The backend is chosen per call
(`backend=` or `FLOWS_KERNELS=cuda|cpu|cuda_host|torch|auto`, registry in `dispatch.py`);
`kernels_cuda.reference` is the exact oracle.
"""

from __future__ import annotations

import torch

from . import reference
from .autograd import SolveFunction, SolveTransposedFunction
from .dispatch import BACKENDS, REGISTRY, prepare, resolve_backend, select, serving_backend
from .reference import tl_conv2d

__all__ = [
    "BACKENDS",
    "REGISTRY",
    "prepare",
    "reference",
    "resolve_backend",
    "serving_backend",
    "tl_conv2d",
    "tl_conv2d_solve",
    "tl_conv2d_solve_transposed",
]


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def tl_conv2d_solve(
    y: torch.Tensor, weight: torch.Tensor, groups: int = 1, backend: str | None = None
) -> torch.Tensor:
    """`A⁻¹ y` for the TL convolution with this (masked) weight; differentiable. Without gradients (the
    served passes) the backend is called directly: a single image's solve takes microseconds."""
    if not _needs_grad(y, weight):
        return select(y, backend).tl_conv2d_solve(y.contiguous(), weight, groups)
    return SolveFunction.apply(y.contiguous(), weight, groups, backend)


def tl_conv2d_solve_transposed(
    g: torch.Tensor, weight: torch.Tensor, groups: int = 1, backend: str | None = None
) -> torch.Tensor:
    """`A⁻ᵀ g` for the TL convolution with this (masked) weight; differentiable."""
    if not _needs_grad(g, weight):
        return select(g, backend).tl_conv2d_solve_transposed(g.contiguous(), weight, groups)
    return SolveTransposedFunction.apply(g.contiguous(), weight, groups, backend)

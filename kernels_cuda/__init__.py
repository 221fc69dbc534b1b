"""Triangular (FInC) convolution ops behind one interface, whatever the backend.

`tl_conv2d` is `A x` (cuDNN / ATen conv), `tl_conv2d_solve` is `A⁻¹ y` and `tl_conv2d_solve_transposed`
is `A⁻ᵀ g`; both solves are differentiable in their input and weight. The backend is chosen per call
(`backend=` or `FLOWS_KERNELS=torch|cuda|cuda_host|auto`); `kernels_cuda.reference` is the exact oracle.
"""

from __future__ import annotations

import torch

from . import reference
from .autograd import SolveFunction, SolveTransposedFunction
from .dispatch import BACKENDS, cuda_kernels_available, load_cuda_kernels, resolve_backend
from .reference import tl_conv2d

__all__ = [
    "BACKENDS",
    "cuda_kernels_available",
    "load_cuda_kernels",
    "reference",
    "resolve_backend",
    "serving_backend",
    "tl_conv2d",
    "tl_conv2d_solve",
    "tl_conv2d_solve_transposed",
]


def serving_backend(device: torch.device) -> str:
    """The backend that serves solves on `device` now (`torch`, `cuda` or `cuda_host`): what dispatch picks
    for a tensor there, `FLOWS_KERNELS` included; `cuda` only once the kernels are loaded (never builds)."""
    from . import cuda_backend

    if device.type == "cuda" and not cuda_backend.loaded():
        return "torch"
    return resolve_backend(torch.empty(0, device=device))


def tl_conv2d_solve(
    y: torch.Tensor, weight: torch.Tensor, groups: int = 1, backend: str | None = None
) -> torch.Tensor:
    """`A⁻¹ y` for the TL convolution with this (masked) weight; differentiable."""
    return SolveFunction.apply(y.contiguous(), weight, groups, backend)


def tl_conv2d_solve_transposed(
    g: torch.Tensor, weight: torch.Tensor, groups: int = 1, backend: str | None = None
) -> torch.Tensor:
    """`A⁻ᵀ g` for the TL convolution with this (masked) weight; differentiable."""
    return SolveTransposedFunction.apply(g.contiguous(), weight, groups, backend)

"""Autograd for the two solves (docs/math.md §3): one opposite solve plus one conv weight gradient each."""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import once_differentiable

from .dispatch import select
from .reference import centre_tap, tl_conv2d_weight_grad

__all__ = ["SolveFunction", "SolveTransposedFunction"]


def _mask_centre(grad_w: torch.Tensor, groups: int) -> torch.Tensor:
    """Zero the gradient of centre-tap entries above the diagonal: the solves never read them."""
    k = grad_w.shape[-1]
    grad_w[:, :, k - 1, k - 1] = torch.tril(centre_tap(grad_w, groups)).reshape_as(grad_w[:, :, k - 1, k - 1])
    return grad_w


class SolveFunction(torch.autograd.Function):
    """`x = A(W)⁻¹ y`; backward: `g_y = A⁻ᵀ g_x`, `g_W = -conv2d_weight(pad_TL(x), g_y)`."""

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, weight: torch.Tensor, groups: int, backend: str | None):
        x = select(y, backend).tl_conv2d_solve(y, weight, groups)
        ctx.save_for_backward(x, weight)
        ctx.groups, ctx.backend = groups, backend
        return x

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_x: torch.Tensor):
        x, weight = ctx.saved_tensors
        ops = select(grad_x, ctx.backend)
        grad_y = ops.tl_conv2d_solve_transposed(grad_x.contiguous(), weight, ctx.groups)
        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = -tl_conv2d_weight_grad(x, grad_y, weight.shape, ctx.groups)
            grad_w = _mask_centre(grad_w, ctx.groups)
        return grad_y, grad_w, None, None


class SolveTransposedFunction(torch.autograd.Function):
    """`u = A(W)⁻ᵀ g`; backward: `g_g = A⁻¹ g_u`, `g_W = -conv2d_weight(pad_TL(g_g), u)`."""

    @staticmethod
    def forward(ctx: Any, g: torch.Tensor, weight: torch.Tensor, groups: int, backend: str | None):
        u = select(g, backend).tl_conv2d_solve_transposed(g, weight, groups)
        ctx.save_for_backward(u, weight)
        ctx.groups, ctx.backend = groups, backend
        return u

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_u: torch.Tensor):
        u, weight = ctx.saved_tensors
        grad_g = select(grad_u, ctx.backend).tl_conv2d_solve(grad_u.contiguous(), weight, ctx.groups)
        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = -tl_conv2d_weight_grad(grad_g, u, weight.shape, ctx.groups)
            grad_w = _mask_centre(grad_w, ctx.groups)
        return grad_g, grad_w, None, None

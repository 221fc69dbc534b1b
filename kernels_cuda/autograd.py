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


def _save(ctx: Any, out: torch.Tensor, weight: torch.Tensor, groups: int, backend: str | None) -> None:
    ctx.save_for_backward(out, weight)
    ctx.groups, ctx.backend = groups, backend


def _weight_grad(ctx: Any, padded: torch.Tensor, grad: torch.Tensor, weight: torch.Tensor):
    """`-conv2d_weight(pad_TL(padded), grad)` with the unread centre taps masked, if W needs a gradient."""
    if not ctx.needs_input_grad[1]:
        return None
    return _mask_centre(-tl_conv2d_weight_grad(padded, grad, weight.shape, ctx.groups), ctx.groups)


class SolveFunction(torch.autograd.Function):
    """`x = A(W)⁻¹ y`; backward: `g_y = A⁻ᵀ g_x`, `g_W = -conv2d_weight(pad_TL(x), g_y)`."""

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, weight: torch.Tensor, groups: int, backend: str | None):
        x = select(y, backend).tl_conv2d_solve(y, weight, groups)
        _save(ctx, x, weight, groups, backend)
        return x

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_x: torch.Tensor):
        x, weight = ctx.saved_tensors
        ops = select(grad_x, ctx.backend)
        grad_y = ops.tl_conv2d_solve_transposed(grad_x.contiguous(), weight, ctx.groups)
        return grad_y, _weight_grad(ctx, x, grad_y, weight), None, None


class SolveTransposedFunction(torch.autograd.Function):
    """`u = A(W)⁻ᵀ g`; backward: `g_g = A⁻¹ g_u`, `g_W = -conv2d_weight(pad_TL(g_g), u)`."""

    @staticmethod
    def forward(ctx: Any, g: torch.Tensor, weight: torch.Tensor, groups: int, backend: str | None):
        u = select(g, backend).tl_conv2d_solve_transposed(g, weight, groups)
        _save(ctx, u, weight, groups, backend)
        return u

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_u: torch.Tensor):
        u, weight = ctx.saved_tensors
        grad_g = select(grad_u, ctx.backend).tl_conv2d_solve(grad_u.contiguous(), weight, ctx.groups)
        return grad_g, _weight_grad(ctx, grad_g, u, weight), None, None

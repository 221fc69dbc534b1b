"""Dense linear algebra oracles and small utilities shared by the tests."""

from __future__ import annotations

import torch
from torch import nn

from kernels_cuda import tl_conv2d


def masked_weight(
    channels: int, k: int, groups: int = 1, std: float = 0.05, dtype=torch.float64, seed: int = 0
) -> torch.Tensor:
    """A random TL kernel with a lower-triangular centre tap and positive diagonal, as training makes."""
    gen = torch.Generator().manual_seed(seed)
    cg = channels // groups
    w = torch.randn(channels, cg, k, k, generator=gen, dtype=dtype) * std
    diag = torch.exp(torch.randn(channels, generator=gen, dtype=dtype) * 0.1)
    for gi in range(groups):
        rows = slice(gi * cg, (gi + 1) * cg)
        w[rows, :, k - 1, k - 1] = torch.tril(w[rows, :, k - 1, k - 1], -1) + torch.diag(diag[rows])
    return w


def dense_conv_matrix(weight: torch.Tensor, groups: int, shape: tuple[int, int, int]) -> torch.Tensor:
    """The dense matrix `A` of the TL convolution on `(C, H, W)` images (column j = A e_j)."""
    n = shape[0] * shape[1] * shape[2]
    basis = torch.eye(n, dtype=weight.dtype).reshape(n, *shape)
    return tl_conv2d(basis, weight, groups).reshape(n, n).T


def dense_jacobian(fn, x: torch.Tensor) -> torch.Tensor:
    """The `(out, in)` Jacobian of `fn` at one sample `x` of shape `(1, ...)`."""
    jac = torch.autograd.functional.jacobian(lambda v: fn(v.reshape(x.shape)).reshape(-1), x.reshape(-1))
    return jac


@torch.no_grad()
def randomise_parameters(module: nn.Module, std: float = 0.1, seed: int = 0) -> None:
    """Move every parameter off its (often zero or identity) initialisation, so Jacobians are generic."""
    gen = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)

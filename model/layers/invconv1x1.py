"""Invertible 1×1 convolution (Glow), LU-parameterised so that its log-determinant is a sum."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import FlowLayer

__all__ = ["InvConv1x1"]


class InvConv1x1(FlowLayer):
    """`y = W x` at every pixel with `W = P L (U + diag(sign · exp(log_s)))`; `logdet = H·W·Σ log_s`.

    Initialised from a random rotation, so it starts volume-preserving.
    """

    def __init__(self, channels: int, generator: torch.Generator | None = None):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(channels, channels, generator=generator, dtype=torch.float64))
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        self.register_buffer("perm", p.float())
        self.register_buffer("sign_s", torch.sign(s).float())
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.lower = nn.Parameter(lower.float())
        self.upper = nn.Parameter(torch.triu(upper, 1).float())
        self.log_s = nn.Parameter(torch.log(torch.abs(s)).float())
        self._frozen_inverse: torch.Tensor | None = None

    def _factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        eye = torch.eye(self.lower.shape[0], dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.perm, lower, upper

    def weight(self) -> torch.Tensor:
        """The `(C, C)` matrix `W`."""
        p, lower, upper = self._factors()
        return p @ lower @ upper

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.weight()
        y = F.conv2d(x, w[:, :, None, None])
        logdet = (x.shape[2] * x.shape[3]) * self.log_s.sum()
        return y, logdet.expand(x.shape[0]).to(x.dtype)

    def inverse_weight(self) -> torch.Tensor:
        """`W⁻¹ = U⁻¹ L⁻¹ Pᵀ` from the triangular factors."""
        p, lower, upper = self._factors()
        eye = torch.eye(lower.shape[0], dtype=lower.dtype, device=lower.device)
        l_inv = torch.linalg.solve_triangular(lower, eye, upper=False, unitriangular=True)
        u_inv = torch.linalg.solve_triangular(upper, eye, upper=True)
        return u_inv @ l_inv @ p.T

    def freeze(self, frozen: bool = True) -> None:
        """Cache `W⁻¹` for inference and export (a plain tensor, no triangular solve in the graph).
        Call `freeze(False)` before changing the parameters again."""
        with torch.no_grad():
            self._frozen_inverse = self.inverse_weight().detach() if frozen else None

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        w_inv = self._frozen_inverse if self._frozen_inverse is not None else self.inverse_weight()
        return F.conv2d(y, w_inv.to(device=y.device, dtype=y.dtype)[:, :, None, None])

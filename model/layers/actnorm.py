"""ActNorm (Glow): a per-channel affine map initialised from the first batch to zero mean, unit variance."""

from __future__ import annotations

import torch
from torch import nn

from .base import FlowLayer

__all__ = ["ActNorm"]


class ActNorm(FlowLayer):
    """`y = (x + bias) * exp(log_scale)`; `logdet = H·W·Σ log_scale`.

    The first forward pass in training mode sets `bias = -mean`, `log_scale = -log(std)` per channel
    (data-dependent initialisation); loading a checkpoint marks the layer initialised.
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))
        self.eps = eps

    @torch.no_grad()
    def _initialise(self, x: torch.Tensor) -> None:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True, unbiased=False) if x.numel() > x.shape[1] else None
        self.bias.copy_(-mean)
        if std is not None:
            self.log_scale.copy_(-torch.log(std + self.eps))
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not bool(self.initialized):
            self._initialise(x)
        y = (x + self.bias) * torch.exp(self.log_scale)
        logdet = (x.shape[2] * x.shape[3]) * self.log_scale.sum()
        return y, logdet.expand(x.shape[0]).to(x.dtype)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * torch.exp(-self.log_scale) - self.bias

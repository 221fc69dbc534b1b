"""Squeeze: trade resolution for channels, `(C, H, W) -> (4C, H/2, W/2)`; volume-preserving."""

from __future__ import annotations

import torch

from .base import FlowLayer, zero_logdet

__all__ = ["Squeeze"]


class Squeeze(FlowLayer):
    """Each 2×2 patch becomes 4 channels (a permutation, so `logdet = 0`)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"Squeeze needs even height and width, got {h}×{w}")
        y = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return y.reshape(b, 4 * c, h // 2, w // 2), zero_logdet(x)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        b, c, h, w = y.shape
        x = y.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(b, c // 4, 2 * h, 2 * w)

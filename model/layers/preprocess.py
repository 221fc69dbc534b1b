"""Dequantisation and the logit map from `[0, 256)` pixel space to `ℝ` (RealNVP), with exact log-dets.

With unit bins, `E_u[log p(x + u)]` (`u ~ U[0, 1)^D`) is a lower bound on the log-probability of the
discrete image `x`, and `-log p / (D · ln 2)` is the bits/dim the literature reports.
"""

from __future__ import annotations

import hashlib
import math
from typing import Literal

import torch

from .base import FlowLayer

__all__ = ["Dequantization", "LogitTransform", "dequantize", "hashed_noise", "hashed_noise_samples"]

Dequantization = Literal["uniform", "hashed", "midpoint"]


def _image_seed(image: torch.Tensor) -> int:
    """A seed from the image's pixel bytes: the same image always gets the same noise."""
    data = image.detach().to("cpu", torch.uint8).contiguous().numpy().tobytes()
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "little") & (2**63 - 1)


def hashed_noise(x: torch.Tensor) -> torch.Tensor:
    """`U[0, 1)` noise for each image, drawn from a generator seeded by that image's pixels."""
    return hashed_noise_samples(x, 1)[0]


def hashed_noise_samples(x: torch.Tensor, samples: int) -> torch.Tensor:
    """`samples` draws of `U[0, 1)` noise per image, shape `(samples, *x.shape)`: consecutive draws of the
    generator seeded by that image's pixels, so draw 0 is `hashed_noise(x)` and draw k never depends on K."""
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    noise = torch.empty((samples, *x.shape), dtype=torch.float64)
    for i in range(x.shape[0]):
        generator = torch.Generator().manual_seed(_image_seed(x[i]))
        noise[:, i] = torch.rand((samples, *x.shape[1:]), generator=generator, dtype=torch.float64)
    return noise.to(dtype=x.dtype, device=x.device)


def dequantize(
    x: torch.Tensor, mode: Dequantization = "hashed", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Integer pixels in `[0, 255]` → continuous values in `[0, 256)`.

    - `uniform`: `+U[0, 1)` drawn from `generator`: the standard variational bound (training, papers).
    - `hashed`: `+U[0, 1)` seeded by each image's own pixels: the same estimator, but deterministic and
      independent of batching; averaged over a test set it matches `uniform`.
    - `midpoint`: `+0.5`. Not a bound and not comparable to published bits/dim (it can be far lower on
      data with many saturated pixels, such as MNIST); kept for diagnostics.
    """
    if mode == "uniform":
        return x + torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    if mode == "hashed":
        return x + hashed_noise(x)
    if mode == "midpoint":
        return x + 0.5
    raise ValueError(f"unknown dequantization {mode!r}; expected 'uniform', 'hashed' or 'midpoint'")


class LogitTransform(FlowLayer):
    """`y = logit(α + (1 - 2α) · x / 256)` for `x ∈ [0, 256)`; the inverse maps back to `[0, 256)`."""

    def __init__(self, alpha: float = 0.05, num_bins: int = 256):
        super().__init__()
        if not 0 <= alpha < 0.5:
            raise ValueError(f"alpha must be in [0, 0.5), got {alpha}")
        self.alpha, self.num_bins = alpha, num_bins

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.alpha + (1 - 2 * self.alpha) * x / self.num_bins
        y = torch.log(p) - torch.log1p(-p)
        per_dim = math.log(1 - 2 * self.alpha) - math.log(self.num_bins)
        logdet = (-torch.log(p) - torch.log1p(-p)).flatten(1).sum(1) + per_dim * x[0].numel()
        return y, logdet

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(y)
        return (p - self.alpha) / (1 - 2 * self.alpha) * self.num_bins

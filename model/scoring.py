"""Scoring and encoding images under a flow, over a pluggable density backend.

A density backend (`LogDensity`) maps dequantised images to log-densities: the torch flow itself
(`torch_log_density`) or an exported ONNX graph (`onnx_log_density`). On top of it: the importance-weighted
bound over K hashed dequantisations (docs/math.md §5), K per image, and bits/dim. `encode` maps images to
their latents with `log|det ∂z/∂x|` at the bin centre or at the image's hashed noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from .layers import Dequantization, dequantize, hashed_noise, hashed_noise_samples

if TYPE_CHECKING:
    from .flow import MultiScaleFlow

__all__ = [
    "Dequantization",
    "Encoding",
    "GraphSession",
    "LogDensity",
    "bits_per_dim",
    "dequantize",
    "encode",
    "importance_weighted_log_prob",
    "log_prob",
    "onnx_log_density",
    "torch_log_density",
]

# Dequantised images `(B, C, H, W)` in [0, 256) → log-densities `(B,)` in nats, float64 on the CPU.
LogDensity = Callable[[torch.Tensor], torch.Tensor]


class GraphSession(Protocol):
    """An exported graph in a runtime session (service/onnx_backend.py): a feed in, its one output out."""

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray: ...


def torch_log_density(flow: MultiScaleFlow) -> LogDensity:
    """The flow's own log-density, computed on its device in its dtype."""
    weight = next(flow.parameters())

    def log_density(x: torch.Tensor) -> torch.Tensor:
        return flow.log_prob_continuous(x.to(device=weight.device, dtype=weight.dtype)).double().cpu()

    return log_density


def onnx_log_density(session: GraphSession) -> LogDensity:
    """The log-density of `model.export`'s `score` graph (float32 input `images`)."""

    def log_density(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run({"images": x.float().numpy()})).double()

    return log_density


def importance_weighted_log_prob(log_density: LogDensity, x: torch.Tensor, samples: int) -> torch.Tensor:
    """`log (1/K) Σ_k p(x + u_k)` (float64, shape `(B,)`) for integer images `x`, with `u_k` the first K
    hashed-noise draws of each image: a lower bound on `log P(x)` that tightens as K grows (docs/math.md §5);
    K = 1 is the hashed single-sample bound."""
    noise = hashed_noise_samples(x, samples)
    if samples == 1:  # log-sum-exp of one draw is that draw, bit for bit: skip the stack
        return log_density(x + noise[0]).double()
    per_draw = torch.stack([log_density(x + noise[k]).double() for k in range(samples)])
    return torch.logsumexp(per_draw, dim=0) - math.log(samples)


def log_prob(log_density: LogDensity, images: torch.Tensor, samples: int | torch.Tensor = 1) -> torch.Tensor:
    """Integer images → log-probabilities (nats, float64 on the CPU): the importance-weighted bound over
    `samples` hashed dequantisations, one K for the batch or one per image (a pass per distinct K)."""
    x = images.float()
    if isinstance(samples, int):
        return importance_weighted_log_prob(log_density, x, samples)
    if bool((samples == samples[0]).all()):  # one K for the batch: the common case
        return importance_weighted_log_prob(log_density, x, int(samples[0]))
    out = torch.empty(x.shape[0], dtype=torch.float64)
    for k in samples.unique().tolist():
        rows = (samples == k).nonzero().squeeze(1)
        out[rows] = importance_weighted_log_prob(log_density, x[rows], int(k))
    return out


def bits_per_dim(log_prob: torch.Tensor, num_dims: int) -> torch.Tensor:
    """`-log p / (D · ln 2)`: the unit the literature reports."""
    return -log_prob / (num_dims * math.log(2))


@dataclass(frozen=True)
class Encoding:
    """Images in latent space: latents `(N, C, H, W)` per level (finest first), float32 unless asked
    for in float64 (latents beyond float32's range), and float64 `log|det ∂z/∂x|` and log-density
    `log N(z) + log_det`, all on the CPU."""

    latents: tuple[torch.Tensor, ...]
    log_det: torch.Tensor
    log_prob: torch.Tensor


def encode(
    flow: MultiScaleFlow,
    images: torch.Tensor,
    hashed: torch.Tensor | None = None,
    latent_dtype: torch.dtype = torch.float32,
) -> Encoding:
    """Integer images → their `Encoding` at the bin centre `x + 0.5` (decoding lands mid-bin, so `decode`
    gives `x` back with room to spare), or where `hashed` (a bool per image) at `x + u` with `u` the image's
    hashed noise: the point `log_prob` evaluates with K = 1."""
    x = images.float()
    noise = torch.full_like(x, 0.5)
    if hashed is not None and bool(hashed.any()):
        rows = hashed.nonzero().squeeze(1)
        noise[rows] = hashed_noise(x[rows])
    weight = next(flow.parameters())
    latents, log_det = flow.encode((x + noise).to(device=weight.device, dtype=weight.dtype))
    exact = [z.double().cpu() for z in latents]
    log_det = log_det.double().cpu()
    kept = tuple(z.to(latent_dtype) for z in exact)
    return Encoding(kept, log_det, flow.prior_log_prob(exact) + log_det)

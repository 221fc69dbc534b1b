"""The multi-scale flow: preprocessing, `levels` × (squeeze → steps → split), and a standard normal prior.

Images are pixels in `[0, 255]` (integers, or floats holding integers). `log_prob` returns nats of the
discrete image (dequantised inside with uniform noise seeded by each image's pixels by default:
deterministic, independent of batching, and on average the standard uniform-dequantisation bound; with
`samples=K` the tighter importance-weighted bound over K such draws), `sample`
returns `uint8` images. `encode`/`decode` expose the latents so callers can draw noise themselves
(the service does, one generator per request).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import scoring
from .architectures import get_architecture
from .config import FlowConfig
from .layers import Dequantization, InvConv1x1, LogitTransform, Split, Squeeze, TriangularKernel, dequantize

__all__ = ["MultiScaleFlow", "build_flow"]

_LOG_2PI = math.log(2 * math.pi)


def _standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * (z.square() + _LOG_2PI).flatten(1).sum(1)


class _Level(nn.Module):
    def __init__(self, channels: int, config: FlowConfig, split: bool):
        """`config`: this level's view (`FlowConfig.at_level`)."""
        super().__init__()
        self.squeeze = Squeeze()
        build = get_architecture(config.arch).build_step
        self.steps = nn.ModuleList(build(4 * channels, config) for _ in range(config.steps))
        self.split = Split(4 * channels) if split else None


class MultiScaleFlow(nn.Module):
    """A Glow-style multi-scale flow whose step type is chosen by `config.arch`."""

    def __init__(self, config: FlowConfig):
        super().__init__()
        self.config = config
        self.preprocess = LogitTransform(alpha=config.logit_alpha)
        channels = config.image_shape[0]
        levels = []
        for i in range(config.levels):
            last = i == config.levels - 1
            levels.append(_Level(channels, config.at_level(i), split=not last))
            channels = 4 * channels if last else (4 * channels) // 2
        self.levels = nn.ModuleList(levels)

    # -- shapes ---------------------------------------------------------------------------------------
    def latent_shapes(self) -> list[tuple[int, int, int]]:
        """Shapes (without batch) of the latents `encode` returns, finest level first."""
        c, h, w = self.config.image_shape
        shapes = []
        for level in self.levels:
            c, h, w = 4 * c, h // 2, w // 2
            if level.split is not None:
                shapes.append((c - level.split.split, h, w))
                c = level.split.split
        shapes.append((c, h, w))
        return shapes

    @property
    def num_dims(self) -> int:
        return self.config.num_dims

    # -- data → latent --------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Continuous images in `[0, 256)` → (latents, `log|det ∂z/∂x|` per sample)."""
        h, logdet = self.preprocess(x)
        latents = []
        for level in self.levels:
            h, ld = level.squeeze(h)
            logdet = logdet + ld
            for step in level.steps:
                h, ld = step(h)
                logdet = logdet + ld
            if level.split is not None:
                h, ld = level.split(h)
                logdet = logdet + ld
                latents.append(h[:, level.split.split :])
                h = h[:, : level.split.split]
        latents.append(h)
        return latents, logdet

    @staticmethod
    def prior_log_prob(latents: list[torch.Tensor]) -> torch.Tensor:
        """`Σ_levels log N(z; 0, I)` per sample: add `encode`'s log-det for the log-density."""
        return sum(_standard_normal_log_prob(z) for z in latents)

    def log_prob_continuous(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density (nats) of continuous images in `[0, 256)`."""
        latents, logdet = self.encode(x)
        return logdet + sum(_standard_normal_log_prob(z) for z in latents)

    def log_prob(
        self,
        x: torch.Tensor,
        dequantization: Dequantization = "hashed",
        generator: torch.Generator | None = None,
        samples: int = 1,
    ) -> torch.Tensor:
        """Log-probability (nats) of images with integer pixels in `[0, 255]`, shape `(B,)`.

        `dequantization`: `hashed` (default), `uniform` (fresh noise from `generator`) or `midpoint`;
        see `model.layers.preprocess.dequantize`. `samples=K > 1` (hashed only) returns the
        importance-weighted bound over K draws, in float64."""
        x = x.to(dtype=self._dtype(), device=self._device())
        if samples != 1:
            if dequantization != "hashed":
                raise ValueError("samples > 1 needs the hashed dequantization")
            return scoring.importance_weighted_log_prob(self.log_prob_continuous, x, samples)
        return self.log_prob_continuous(dequantize(x, dequantization, generator))

    def bits_per_dim(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """`-log p(x) / (D · ln 2)` per image: the unit the literature reports."""
        return scoring.bits_per_dim(self.log_prob(x, **kwargs), self.num_dims)

    # -- latent → data --------------------------------------------------------------------------------
    def sample_latents(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> list[torch.Tensor]:
        """Standard normal latents scaled by `temperature`, drawn from `generator` (on its device)."""
        device = generator.device if generator is not None else self._device()
        return [
            torch.randn((n, *shape), generator=generator, device=device, dtype=self._dtype()) * temperature
            for shape in self.latent_shapes()
        ]

    def decode(self, latents: list[torch.Tensor]) -> torch.Tensor:
        """Latents → continuous images in `[0, 256)`."""
        latents = [z.to(device=self._device(), dtype=self._dtype()) for z in latents]
        h = latents[-1]
        index = len(latents) - 2
        for level in reversed(self.levels):
            if level.split is not None:
                h = level.split.inverse(torch.cat([h, latents[index]], dim=1))
                index -= 1
            for step in reversed(level.steps):
                h = step.inverse(h)
            h = level.squeeze.inverse(h)
        return self.preprocess.inverse(h)

    @staticmethod
    def to_uint8(x: torch.Tensor) -> torch.Tensor:
        """Continuous `[0, 256)` → the pixel bin it falls in, as `uint8`."""
        return torch.nan_to_num(x, nan=0.0).floor().clamp(0, 255).to(torch.uint8)

    def sample(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """`n` images as `uint8` of shape `(n, C, H, W)`."""
        return self.to_uint8(self.decode(self.sample_latents(n, temperature, generator)))

    def freeze(self, frozen: bool = True) -> MultiScaleFlow:
        """Cache weight-only computations (1×1 inverses, masked k×k kernels) for inference and export;
        `False` undoes it."""
        for module in self.modules():
            if isinstance(module, InvConv1x1 | TriangularKernel):
                module.freeze(frozen)
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


def build_flow(config: FlowConfig) -> MultiScaleFlow:
    """A freshly initialised flow (ActNorm layers initialise on the first training batch)."""
    return MultiScaleFlow(config)

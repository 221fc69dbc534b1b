"""The served model: draws latents, decodes a batch, scores a batch. Knows nothing about queues."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model import MultiScaleFlow, load_flow, read_config

__all__ = ["ServedModel", "resolve_device"]

log = logging.getLogger("service.model")


def resolve_device(requested: str) -> torch.device:
    """`auto` → CUDA when present; `cuda` without a GPU fails loudly instead of silently using the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but no CUDA device is available")
    return torch.device(requested)


@dataclass
class ServedModel:
    name: str
    path: Path
    flow: MultiScaleFlow
    config: dict[str, Any]
    device: torch.device

    @classmethod
    def load(cls, path: Path, device: torch.device) -> ServedModel:
        flow = load_flow(path, device=device)
        return cls(path.name, path, flow, read_config(path), device)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.flow.config.image_shape)  # type: ignore[return-value]

    @property
    def num_dims(self) -> int:
        return self.flow.num_dims

    def draw_latents(self, n: int, temperature: float, seed: int) -> list[torch.Tensor]:
        """This request's noise, from its own CPU generator: independent of what it is batched with."""
        generator = torch.Generator().manual_seed(seed)
        shapes = self.flow.latent_shapes()
        return [torch.randn((n, *s), generator=generator) * temperature for s in shapes]

    def decode(self, latents: list[torch.Tensor]) -> torch.Tensor:
        """Latents (one tensor per level) → `uint8` images on the CPU."""
        return self.flow.to_uint8(self.flow.decode([z.to(self.device) for z in latents])).cpu()

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """`uint8` images → log-probabilities (nats, float64 on the CPU)."""
        return self.flow.log_prob(images.to(self.device)).double().cpu()

    def bits_per_dim(self, log_prob: torch.Tensor) -> torch.Tensor:
        return -log_prob / (self.num_dims * math.log(2))

    def warm_up(self, batch_sizes: list[int]) -> None:
        """Run both passes at every batch size we use, so the first requests pay no first-call costs."""
        with torch.inference_mode():
            for n in batch_sizes:
                images = self.decode(self.draw_latents(n, 1.0, seed=0))
                self.score(images)
        log.info("warmed up %s on %s at batch sizes %s", self.name, self.device, batch_sizes)

    def info(self) -> dict[str, Any]:
        training = self.config.get("training", {})
        return {
            "name": self.name,
            "architecture": self.flow.config.arch,
            "config": self.flow.config.model_dump(mode="json"),
            "image_shape": list(self.image_shape),
            "num_parameters": self.flow.num_parameters(),
            "test_bits_per_dim": training.get("test_bits_per_dim"),
            "dataset": training.get("dataset"),
            "device": str(self.device),
            "backend": "torch",
        }

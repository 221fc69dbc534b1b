"""Decoding latents into images over a pluggable backend (the torch flow, or an exported ONNX graph), and
the seeded latents of one request."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from .flow import MultiScaleFlow
from .scoring import GraphSession

__all__ = ["Decoder", "draw_latents", "onnx_decoder", "torch_decoder"]

# Latents (one tensor per level, finest first, temperature applied) → `uint8` images on the CPU.
Decoder = Callable[[Sequence[torch.Tensor]], torch.Tensor]


def draw_latents(flow: MultiScaleFlow, n: int, temperature: float, seed: int) -> list[torch.Tensor]:
    """`n` images' latents from their own CPU generator: the same seed gives the same latents, whatever
    else is decoded with them."""
    return flow.sample_latents(n, temperature, torch.Generator().manual_seed(seed))


def torch_decoder(flow: MultiScaleFlow) -> Decoder:
    """The flow's own inverse, on its device."""
    device = next(flow.parameters()).device

    def decode(latents: Sequence[torch.Tensor]) -> torch.Tensor:
        return flow.to_uint8(flow.decode([z.to(device) for z in latents])).cpu()

    return decode


def onnx_decoder(session: GraphSession) -> Decoder:
    """`model.export`'s `sample` graph (inputs `temperature` and `z0, z1, ...`), at temperature 1."""

    def decode(latents: Sequence[torch.Tensor]) -> torch.Tensor:
        feed = {"temperature": np.ones(1, dtype=np.float32)}
        feed.update({f"z{i}": z.numpy().astype(np.float32, copy=False) for i, z in enumerate(latents)})
        return MultiScaleFlow.to_uint8(torch.from_numpy(session.run(feed)))

    return decode

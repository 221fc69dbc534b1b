"""Decoding latents into images over a pluggable backend (the torch flow, or an exported ONNX graph), and
the seeded latents of one request."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from .flow import MultiScaleFlow
from .layers import subnets_in
from .scoring import GraphSession

__all__ = ["Decoder", "draw_latents", "onnx_decoder", "torch_decoder"]

# Latents (one tensor per level, finest first, temperature applied) → `uint8` images on the CPU.
Decoder = Callable[[Sequence[torch.Tensor]], torch.Tensor]


def draw_latents(flow: MultiScaleFlow, n: int, temperature: float, seed: int) -> list[torch.Tensor]:
    """`n` images' latents from their own CPU generator: the same seed gives the same latents, whatever
    else is decoded with them."""
    return flow.sample_latents(n, temperature, torch.Generator().manual_seed(seed))


def torch_decoder(flow: MultiScaleFlow, subnet_dtype: torch.dtype | None = None) -> Decoder:
    """The flow's own inverse, on its device; `subnet_dtype` (bfloat16) runs its coupling networks under
    autocast, the transforms staying float32 (`model.layers.subnets_in`). oneDNN computes a bfloat16
    convolution of one image differently from the same image in a batch of several (another kernel), so
    a lone image is decoded beside a copy of itself: an image's pixels then never depend on the batch."""
    device = next(flow.parameters()).device

    def decode(latents: Sequence[torch.Tensor]) -> torch.Tensor:
        zs = [z.to(device) for z in latents]
        alone = subnet_dtype is not None and zs[0].shape[0] == 1
        if alone:
            zs = [z.expand(2, *z.shape[1:]) for z in zs]
        with subnets_in(subnet_dtype):
            images = flow.to_uint8(flow.decode(zs)).cpu()
        return images[:1] if alone else images

    return decode


def onnx_decoder(session: GraphSession) -> Decoder:
    """`model.export`'s `sample` graph (inputs `temperature` and `z0, z1, ...`), at temperature 1."""

    def decode(latents: Sequence[torch.Tensor]) -> torch.Tensor:
        feed = {"temperature": np.ones(1, dtype=np.float32)}
        feed.update({f"z{i}": z.numpy().astype(np.float32, copy=False) for i, z in enumerate(latents)})
        return MultiScaleFlow.to_uint8(torch.from_numpy(session.run(feed)))

    return decode

"""FInC Flow step: ActNorm → FInC unit (k×k, four orientations) → 1×1 conv → affine coupling.

The FInC convolution is a masked conv on the data → latent side, so scoring is convolutions only and
sampling runs the triangular solve."""

from __future__ import annotations

from typing import TYPE_CHECKING

from model.layers import FInCUnit, FlowSequence, InvConv1x1

from .base import ArchitectureSpec, coupling_step

if TYPE_CHECKING:
    from model.config import FlowConfig

__all__ = ["FINC", "finc_step"]


def finc_step(channels: int, config: FlowConfig) -> FlowSequence:
    unit = FInCUnit(channels, config.kernel_size, learn_diagonal=config.learn_diagonal)
    return coupling_step(channels, config, unit, InvConv1x1(channels))


FINC = ArchitectureSpec(
    name="finc",
    build_step=finc_step,
    title="FInC Flow (masked k×k convolutions; inverse by a parallel triangular solve)",
    solve_pass="sample",
    onnx_passes=("score",),
    published={
        "mnist": "1.05–1.15 (FInC Flow paper, ≈10M params, GPU)",
        "fashion-mnist": "≈2.9–3.0 (published flows)",
    },
)

"""Glow step: ActNorm → invertible 1×1 conv → affine coupling."""

from __future__ import annotations

from typing import TYPE_CHECKING

from model.layers import FlowSequence, InvConv1x1

from .base import ArchitectureSpec, coupling_step

if TYPE_CHECKING:
    from model.config import FlowConfig

__all__ = ["GLOW", "glow_step"]


def glow_step(channels: int, config: FlowConfig) -> FlowSequence:
    return coupling_step(channels, config, InvConv1x1(channels))


GLOW = ArchitectureSpec(
    name="glow",
    build_step=glow_step,
    title="Glow (invertible 1×1 convolutions)",
    solve_pass=None,
    onnx_passes=("score", "sample"),
    published={"mnist": "1.05 (Glow, as reported by FInC Flow)"},
)

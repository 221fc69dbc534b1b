"""Inverse-Flow step: ActNorm → inverse-conv unit (solve data→latent) → 1×1 conv → affine coupling.

The masked convolution is used the other way round: scoring runs the triangular solve and sampling is
convolutions only."""

from __future__ import annotations

from typing import TYPE_CHECKING

from model.layers import FlowSequence, InvConv1x1, InverseConvUnit

from .base import ArchitectureSpec, coupling_step

if TYPE_CHECKING:
    from model.config import FlowConfig

__all__ = ["INVERSE_FLOW", "inverse_flow_step"]


def inverse_flow_step(channels: int, config: FlowConfig) -> FlowSequence:
    unit = InverseConvUnit(channels, config.kernel_size, learn_diagonal=config.learn_diagonal)
    return coupling_step(channels, config, unit, InvConv1x1(channels))


INVERSE_FLOW = ArchitectureSpec(
    name="inverse_flow",
    build_step=inverse_flow_step,
    title="Inverse-Flow (the inverse of a masked k×k convolution on the data→latent side)",
    solve_pass="score",
    onnx_passes=("sample",),
    published={"mnist": "1.31 (Inverse-Flow paper, 1.6M params, GPU)"},
)

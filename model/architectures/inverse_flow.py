"""Inverse-Flow step: ActNorm → inverse-conv unit (solve data→latent) → 1×1 conv → affine coupling."""

from __future__ import annotations

from model.config import FlowConfig
from model.layers import ActNorm, AffineCoupling, FlowSequence, InvConv1x1, InverseConvUnit

__all__ = ["inverse_flow_step"]


def inverse_flow_step(channels: int, config: FlowConfig) -> FlowSequence:
    return FlowSequence(
        [
            ActNorm(channels),
            InverseConvUnit(channels, config.kernel_size, learn_diagonal=config.learn_diagonal),
            InvConv1x1(channels),
            AffineCoupling(channels, hidden=config.hidden),
        ]
    )

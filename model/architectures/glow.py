"""Glow step: ActNorm → invertible 1×1 conv → affine coupling."""

from __future__ import annotations

from model.config import FlowConfig
from model.layers import ActNorm, AffineCoupling, FlowSequence, InvConv1x1

__all__ = ["glow_step"]


def glow_step(channels: int, config: FlowConfig) -> FlowSequence:
    return FlowSequence(
        [ActNorm(channels), InvConv1x1(channels), AffineCoupling(channels, hidden=config.hidden)]
    )

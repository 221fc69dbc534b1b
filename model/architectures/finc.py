"""FInC Flow step: ActNorm → FInC unit (k×k, four orientations) → 1×1 conv → affine coupling."""

from __future__ import annotations

from model.config import FlowConfig
from model.layers import ActNorm, AffineCoupling, FInCUnit, FlowSequence, InvConv1x1

__all__ = ["finc_step"]


def finc_step(channels: int, config: FlowConfig) -> FlowSequence:
    return FlowSequence(
        [
            ActNorm(channels),
            FInCUnit(channels, config.kernel_size, learn_diagonal=config.learn_diagonal),
            InvConv1x1(channels),
            AffineCoupling(channels, hidden=config.hidden),
        ]
    )

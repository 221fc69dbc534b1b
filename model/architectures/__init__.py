"""Flow-step builders by architecture name; the multi-scale assembly lives in `model.flow`."""

from __future__ import annotations

from collections.abc import Callable

from model.config import FlowConfig
from model.layers import FlowSequence

from .finc import finc_step
from .glow import glow_step
from .inverse_flow import inverse_flow_step

__all__ = ["STEP_BUILDERS", "StepBuilder"]

StepBuilder = Callable[[int, FlowConfig], FlowSequence]
STEP_BUILDERS: dict[str, StepBuilder] = {
    "glow": glow_step,
    "finc": finc_step,
    "inverse_flow": inverse_flow_step,
}

"""What an architecture is to the rest of the code: a name, a step builder, and the facts that follow from
its layers (which pass runs the triangular solve, which passes export to ONNX, its title on cards)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from model.layers import ActNorm, AffineCoupling, FlowLayer, FlowSequence

if TYPE_CHECKING:
    from model.config import FlowConfig

__all__ = ["PASSES", "ArchitectureSpec", "Pass", "StepBuilder", "coupling_step"]

# The two directions of a flow that serving and export deal in: `score` maps images to log-densities
# (data → latent), `sample` maps latents to images (latent → data).
Pass = Literal["score", "sample"]
PASSES: tuple[Pass, ...] = ("score", "sample")
StepBuilder = Callable[[int, "FlowConfig"], FlowSequence]


@dataclass(frozen=True)
class ArchitectureSpec:
    """One registered architecture; `FlowConfig.arch` names it and checkpoints store that name."""

    name: str
    build_step: StepBuilder = field(repr=False)  # (channels, config) -> one flow step
    title: str  # what model cards call it
    solve_pass: Pass | None  # the pass that runs the sequential triangular solve (None: neither does)
    onnx_passes: tuple[Pass, ...]  # the passes `model.export` writes as ONNX graphs, in file order
    published: Mapping[str, str] = field(default_factory=dict)  # dataset -> published test bits/dim

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"architecture name {self.name!r} must be an identifier (it is stored in JSON)")
        unknown = [p for p in (self.solve_pass, *self.onnx_passes) if p is not None and p not in PASSES]
        if unknown:
            raise ValueError(f"{self.name}: unknown passes {unknown}; expected some of {PASSES}")
        if self.solve_pass in self.onnx_passes:
            raise ValueError(f"{self.name}: the {self.solve_pass} pass runs a solve, which ONNX cannot hold")


def coupling_step(channels: int, config: FlowConfig, *mixing: FlowLayer) -> FlowSequence:
    """ActNorm → the channel-mixing layers → affine coupling: the step shape every architecture shares."""
    return FlowSequence([ActNorm(channels), *mixing, AffineCoupling(channels, hidden=config.hidden)])

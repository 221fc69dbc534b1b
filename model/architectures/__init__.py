"""The architecture registry: name → `ArchitectureSpec`. Everything that lists architectures derives from it
(config validation, `model.train --arch`, ONNX export, model cards, the service's backend labels, the
benchmarks and the tests). Adding one: a file here with its step builder and spec, and one line below."""

from __future__ import annotations

from .base import PASSES, ArchitectureSpec, Pass, StepBuilder, coupling_step
from .finc import FINC
from .glow import GLOW
from .inverse_flow import INVERSE_FLOW

__all__ = [
    "ARCHITECTURES",
    "PASSES",
    "ArchitectureSpec",
    "Pass",
    "StepBuilder",
    "coupling_step",
    "get_architecture",
    "register",
]

ARCHITECTURES: dict[str, ArchitectureSpec] = {}


def register(spec: ArchitectureSpec) -> ArchitectureSpec:
    """Add an architecture; its name must be new (checkpoints name their architecture)."""
    if spec.name in ARCHITECTURES:
        raise ValueError(f"architecture {spec.name!r} is already registered")
    ARCHITECTURES[spec.name] = spec
    return spec


def get_architecture(name: str) -> ArchitectureSpec:
    """The spec registered as `name`; a `ValueError` naming the registered ones otherwise."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(
            f"unknown architecture {name!r}; expected one of {', '.join(ARCHITECTURES)}"
        ) from None


for _spec in (GLOW, FINC, INVERSE_FLOW):
    register(_spec)

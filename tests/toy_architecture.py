"""A pytest plugin that registers one more architecture, to show that registering is all it takes:
`pytest -p tests.toy_architecture ...` collects every architecture-parametrised test for it too (importing
this module registers nothing; loading it as a plugin does).

With `FLOWS_COLLECTED` set, it also writes each collected test's parameters there (JSON) for
`tests/test_architectures.py` to compare."""

from __future__ import annotations

import json
import os

from model.architectures import ARCHITECTURES, ArchitectureSpec, coupling_step, register
from model.config import FlowConfig
from model.layers import FInCUnit, FlowSequence

TOY = "toy_finc"


def toy_step(channels: int, config: FlowConfig) -> FlowSequence:
    """FInC without the 1×1 convolution: a different assembly of the same layers."""
    return coupling_step(channels, config, FInCUnit(channels, config.kernel_size))


def pytest_configure(config) -> None:
    """Register the toy architecture before any test module is collected (only where this is a plugin)."""
    if TOY not in ARCHITECTURES:
        register(
            ArchitectureSpec(
                name=TOY, build_step=toy_step, title="Toy FInC", solve_pass="sample", onnx_passes=("score",)
            )
        )


def pytest_collection_finish(session) -> None:
    path = os.environ.get("FLOWS_COLLECTED")
    if path:
        params = {
            item.nodeid: {k: str(v) for k, v in getattr(item, "callspec", None).params.items()}
            for item in session.items
            if getattr(item, "callspec", None) is not None
        }
        with open(path, "w") as f:
            json.dump(params, f)

"""Normalizing flows with fast invertible k×k convolutions: layers, architectures, checkpoints."""

from .checkpoint import CheckpointError, load_flow, read_config, save_flow
from .config import Architecture, FlowConfig
from .flow import MultiScaleFlow, build_flow

__all__ = [
    "Architecture",
    "CheckpointError",
    "FlowConfig",
    "MultiScaleFlow",
    "build_flow",
    "load_flow",
    "read_config",
    "save_flow",
]

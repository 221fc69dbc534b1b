"""Model folders with versions for the tests: a shipped checkpoint copied into a temporary models folder,
and new versions of it (other weights, or broken ones) dropped in beside it the way a deployment would."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from .conftest import MODELS

__all__ = ["copy_model", "drop_version", "weights_digest"]

_CHECKPOINT_FILES = ("config.json", "model.safetensors")


def copy_model(models: Path, name: str) -> Path:
    """The shipped checkpoint `name` as `models/name` (flat: version 1), with its ONNX graphs and
    out-of-distribution statistics."""
    target = models / name
    shutil.copytree(MODELS / name, target, ignore=shutil.ignore_patterns("*.png", "README.md"))
    return target


def drop_version(models: Path, name: str, version: int, scale: float = 1.01, nan: bool = False) -> Path:
    """Version `version` of model `name`: the shipped weights with every floating tensor scaled by `scale`
    (other weights, other images), or with a NaN in the first one (`nan`: a version that cannot load).
    Written beside the folder and renamed into place, so that a poller never sees half of it."""
    staging = models / f".staging-{name}-{version}"
    staging.mkdir(parents=True)
    shutil.copy(MODELS / name / "config.json", staging / "config.json")
    tensors = load_file(str(MODELS / name / "model.safetensors"))
    for key, value in tensors.items():
        if value.is_floating_point():
            tensors[key] = value * scale
    if nan:
        first = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 1)
        tensors[first] = tensors[first].clone()
        tensors[first].view(-1)[0] = float("nan")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(staging / "model.safetensors"))
    target = models / name / str(version)
    os.rename(staging, target)
    assert sorted(p.name for p in target.iterdir()) == sorted(_CHECKPOINT_FILES)
    return target


def weights_digest(path: Path) -> str:
    """SHA-256 of a checkpoint's weights, computed here independently of the server."""
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()

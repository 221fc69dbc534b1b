"""Checkpoint format: a directory with `config.json` and `model.safetensors` (no pickle anywhere).

`config.json` holds the architecture (`FlowConfig`), the preprocessing, and a training summary
(dataset, steps, test bits/dim, parameter count, commit, date). Training runs add
`train_state.safetensors` for `--resume`: optimizer moments, weights and counters in one file, replaced
atomically (model/train.py).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from .config import FlowConfig
from .flow import MultiScaleFlow

__all__ = ["FORMAT_VERSION", "CheckpointError", "load_flow", "read_config", "save_flow", "weights_digest"]

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


_DIGESTS: dict[tuple[str, int, int], str] = {}


def weights_digest(checkpoint: str | Path) -> str:
    """SHA-256 of the checkpoint's `model.safetensors`, what ties ONNX graphs, out-of-distribution statistics
    and served versions to the weights; read once per (path, size, modification time). OSError when the
    file cannot be read."""
    path = Path(checkpoint) / WEIGHTS_FILE
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


class CheckpointError(ValueError):
    """A checkpoint directory is missing, incomplete, or does not match its architecture."""


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_flow(flow: MultiScaleFlow, path: str | Path, training: dict[str, Any] | None = None) -> Path:
    """Write `flow` to the directory `path` (created if needed); files are replaced atomically."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in flow.state_dict().items()}
    tmp = path / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp), metadata={"format_version": str(FORMAT_VERSION)})
    tmp.chmod(0o644)  # safetensors creates owner-only files; servers often run as another user
    os.replace(tmp, path / WEIGHTS_FILE)
    config = {
        "format_version": FORMAT_VERSION,
        "architecture": flow.config.model_dump(mode="json"),
        "image_shape": list(flow.config.image_shape),
        "preprocessing": {
            "input": "integer pixels in [0, 255], channels first",
            "dequantization": "uniform noise U[0,1) (training, reported bits/dim); scoring seeds that noise "
            "with a hash of each image, which makes it deterministic",
            "transform": f"logit(alpha + (1 - 2 alpha) x / 256), alpha = {flow.config.logit_alpha}",
        },
        "num_parameters": flow.num_parameters(),
        "training": training or {},
    }
    _atomic_write_text(path / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    return path


def read_config(path: str | Path) -> dict[str, Any]:
    """The parsed `config.json` of a checkpoint directory."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {str(path)!r} does not exist")
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{str(path)!r} has no {CONFIG_FILE}")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_path} is not valid JSON: {exc}") from exc
    if config.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{config_path}: format_version {config.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    return config


def load_flow(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> MultiScaleFlow:
    """Load a checkpoint directory into an eval-mode flow on `device`; `CheckpointError` naming the file
    and the reason when the config is invalid, the weights unreadable, of other shapes or not finite."""
    path = Path(path)
    config = read_config(path)
    try:
        arch = FlowConfig.model_validate(config.get("architecture"))
    except ValidationError as exc:
        raise CheckpointError(f"{path / CONFIG_FILE}: invalid architecture: {exc}") from exc
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{str(path)!r} has no {WEIGHTS_FILE}")
    flow = MultiScaleFlow(arch)
    try:
        state = load_file(str(weights))
    except (OSError, ValueError, RuntimeError) as exc:  # truncated or not a safetensors file at all
        raise CheckpointError(f"{weights} is not a readable safetensors file: {exc}") from exc
    expected = flow.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        details = []
        if missing:
            details.append(f"missing {missing[:3]}{'…' if len(missing) > 3 else ''}")
        if unexpected:
            details.append(f"unexpected {unexpected[:3]}{'…' if len(unexpected) > 3 else ''}")
        if mismatched:
            k = mismatched[0]
            details.append(f"shape of {k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)}")
        raise CheckpointError(f"{weights} does not match architecture {arch.arch!r}: " + "; ".join(details))
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(f"{weights}: {name} holds {bad} non-finite values (NaN or infinity)")
    flow.load_state_dict(state)
    return flow.to(device=device, dtype=dtype).eval()

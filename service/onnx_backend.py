"""onnxruntime sessions for a checkpoint's exported passes (`python -m model.export`).

A GPU server asks for CUDAExecutionProvider first; onnxruntime silently falls back to the CPU when it
cannot use the GPU, so the providers are checked after the session is built and a fallback is an error.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from model.export import weights_digest

__all__ = ["OnnxPass", "load_onnx_passes"]

log = logging.getLogger("service.onnx")


class OnnxPass:
    """One exported graph (`score` or `sample`) in an onnxruntime session."""

    def __init__(self, path: Path, device: torch.device, threads: int = 0):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        wanted = (
            ["CUDAExecutionProvider", "CPUExecutionProvider"]
            if device.type == "cuda"
            else ["CPUExecutionProvider"]
        )
        available = ort.get_available_providers()
        if device.type == "cuda" and "CUDAExecutionProvider" not in available:
            raise RuntimeError(
                f"device is cuda but onnxruntime offers only {available}: "
                "install onnxruntime-gpu, or use --backend torch"
            )
        self.session = ort.InferenceSession(str(path), options, providers=wanted)
        self.provider = self.session.get_providers()[0]
        if device.type == "cuda" and self.provider != "CUDAExecutionProvider":
            raise RuntimeError(f"onnxruntime fell back to {self.provider} for {path}; the GPU was required")
        self.input_names = [i.name for i in self.session.get_inputs()]
        log.info("onnx %s on %s", path, self.provider)

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, feed)[0]


def load_onnx_passes(checkpoint: Path, device: torch.device, threads: int = 0) -> dict[str, OnnxPass]:
    """The exported passes of a checkpoint (`{}` when it has none)."""
    manifest_path = checkpoint / "onnx" / "manifest.json"
    if not manifest_path.is_file():
        return {}
    try:
        manifest = json.loads(manifest_path.read_text())
        passes = {name: checkpoint / "onnx" / entry["file"] for name, entry in manifest["passes"].items()}
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise RuntimeError(f"{manifest_path} is not a valid export manifest ({exc!r})") from exc
    if manifest.get("weights_sha256") != weights_digest(checkpoint):
        raise RuntimeError(
            f"{checkpoint.name}: the ONNX graphs were exported from other weights; "
            "re-run python -m model.export"
        )
    return {name: OnnxPass(path, device, threads) for name, path in passes.items()}

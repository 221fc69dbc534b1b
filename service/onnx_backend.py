"""onnxruntime sessions for a checkpoint's exported passes (`python -m model.export`).

A checkpoint's graphs are its own `onnx/` folder or, for a folder that ships none (a model too big to
ship them within its size budget, or one just trained), an export of its weights made once at start-up
into a cache keyed by the weights' digest. A GPU server asks for CUDAExecutionProvider first; onnxruntime
silently falls back to the CPU when it cannot use the GPU, so the providers are checked after the session
is built and a fallback is an error.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from model.architectures import get_architecture
from model.checkpoint import read_config
from model.export import weights_digest

__all__ = ["EXPORT_TIMEOUT_S", "OnnxPass", "graphs_folder", "load_onnx_passes"]

EXPORT_TIMEOUT_S = 900.0

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


def graphs_folder(checkpoint: Path, cache: Path | None = None, threads: int = 0) -> Path | None:
    """The folder of a checkpoint's ONNX graphs: its own `onnx/`, else `cache/NAME-DIGEST/`, exported now
    if absent (once per weights; `None`: no cache given, or the architecture has no convolution-only
    pass). The export runs `python -m model.export` in a subprocess (torch.export's tracing state stays out
    of a serving process) into a temporary folder renamed into place, so concurrent servers never see half
    an export."""
    shipped = checkpoint / "onnx"
    if (shipped / "manifest.json").is_file():
        return shipped
    if cache is None:
        return None
    try:
        arch = read_config(checkpoint)["architecture"]["arch"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # loading the checkpoint itself reports what is wrong with it
    if not get_architecture(arch).onnx_passes:
        return None
    target = cache / f"{checkpoint.name}-{weights_digest(checkpoint)[:16]}"
    if (target / "manifest.json").is_file():
        return target
    try:
        cache.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache))
    except OSError as exc:  # a read-only or unwritable cache: no export (auto serves on torch)
        raise RuntimeError(f"cannot export {checkpoint.name}'s ONNX graphs into {cache}: {exc}") from exc
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    started = time.perf_counter()
    log.info("%s ships no ONNX graphs: exporting them once into %s", checkpoint.name, target)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "model.export", str(checkpoint), "--out", str(work)],
            capture_output=True,
            text=True,
            env=env,
            timeout=EXPORT_TIMEOUT_S,
        )
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"exporting {checkpoint.name} to ONNX failed: {' | '.join(tail)}")
        try:
            work.rename(target)
        except OSError:  # another process finished the same export first
            if not (target / "manifest.json").is_file():
                raise
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"exporting {checkpoint.name} to ONNX took over {EXPORT_TIMEOUT_S:.0f} s") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("%s: ONNX graphs exported in %.1f s", checkpoint.name, time.perf_counter() - started)
    return target


def load_onnx_passes(
    checkpoint: Path, device: torch.device, threads: int = 0, cache: Path | None = None
) -> dict[str, OnnxPass]:
    """The exported passes of a checkpoint (`{}` when it has none and `cache` is None), exporting them
    into `cache` when it ships none."""
    folder = graphs_folder(checkpoint, cache, threads)
    if folder is None:
        return {}
    manifest_path = folder / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        passes = {name: folder / entry["file"] for name, entry in manifest["passes"].items()}
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise RuntimeError(f"{manifest_path} is not a valid export manifest ({exc!r})") from exc
    if manifest.get("weights_sha256") != weights_digest(checkpoint):
        raise RuntimeError(
            f"{checkpoint.name}: the ONNX graphs were exported from other weights; "
            "re-run python -m model.export"
        )
    return {name: OnnxPass(path, device, threads) for name, path in passes.items()}

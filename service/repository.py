"""The models folder on disk: each model's versions and where each lives, read fresh on every scan.

A model is a folder under the models folder, served under the folder's name. Its versions are numbered
subfolders (`NAME/1/`, `NAME/2/`, …, Triton's layout), each a checkpoint (`config.json`,
`model.safetensors`, …); a folder that is itself a checkpoint (today's flat layout) is version 1, and it may
hold numbered subfolders beside its files for later versions (a numbered `1/` wins over the flat files).
The latest version is the highest number. Nothing here loads a model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from model.checkpoint import CONFIG_FILE, WEIGHTS_FILE, weights_digest

__all__ = ["ModelVersion", "fingerprint", "model_names", "scan", "scan_model", "weights_sha256"]

_VERSION = re.compile(r"[1-9][0-9]{0,8}")  # Triton's numeric version folders, without leading zeros


@dataclass(frozen=True, order=True)
class ModelVersion:
    """One version of one model on disk."""

    name: str
    version: int
    path: Path


def _is_checkpoint(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file()


def scan_model(models: Path, name: str) -> dict[int, ModelVersion]:
    """The versions of model `name` (empty when it has none, or no folder)."""
    folder = models / name
    if not folder.is_dir():
        return {}
    versions: dict[int, ModelVersion] = {}
    if _is_checkpoint(folder):
        versions[1] = ModelVersion(name, 1, folder)
    for sub in folder.iterdir():
        if _VERSION.fullmatch(sub.name) and sub.is_dir() and _is_checkpoint(sub):
            versions[int(sub.name)] = ModelVersion(name, int(sub.name), sub)
    return dict(sorted(versions.items()))


def scan(models: Path) -> dict[str, dict[int, ModelVersion]]:
    """Every model under `models` with at least one version, by name (sorted), each with its versions."""
    found = {}
    for folder in sorted(p for p in models.iterdir() if p.is_dir() and not p.name.startswith(".")):
        versions = scan_model(models, folder.name)
        if versions:
            found[folder.name] = versions
    return found


def model_names(models: Path) -> list[str]:
    """The names of the models under `models`, sorted."""
    return list(scan(models))


def fingerprint(path: Path) -> tuple:
    """Size and modification time of a checkpoint's config and weights: changes when either is rewritten
    (or is still being copied in)."""
    stats = []
    for file in (path / CONFIG_FILE, path / WEIGHTS_FILE):
        try:
            st = file.stat()
        except OSError:
            stats.append(None)
        else:
            stats.append((st.st_size, st.st_mtime_ns))
    return (str(path), *stats)


def weights_sha256(path: Path) -> str | None:
    """SHA-256 of a checkpoint's `model.safetensors` (`model.checkpoint.weights_digest`), None when it has
    none or it cannot be read."""
    try:
        return weights_digest(path)
    except OSError:
        return None

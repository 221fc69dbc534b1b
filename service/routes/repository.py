"""Triton's model repository extension: the index of every model version and its state, and loading
(or reloading: a new version swaps in without a restart) and unloading models (service/registry.py).

A checkpoint's two protocol models (`NAME` and `NAME.sample`) are one set of weights: loading or unloading
either does both. Bodies are optional JSON objects and need no content type.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request

from ..bodies import off_loop
from ..errors import InvalidInferenceRequest
from ..oip_models import SAMPLE_SUFFIX, protocol_names, resolve
from ..registry import ModelRegistry
from ..state import ReadyState

__all__ = ["router"]

router = APIRouter(prefix="/v2/repository", tags=["open inference protocol"], include_in_schema=False)


def _object(body: bytes) -> dict[str, Any]:
    """An optional JSON object body (empty: `{}`)."""
    if not body.strip():
        return {}
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidInferenceRequest(f"the request is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise InvalidInferenceRequest("the request body must be a JSON object")
    return parsed


async def _parameters(request: Request, allowed: set[str]) -> dict[str, Any]:
    body = await off_loop(_object, await request.body())
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInferenceRequest("'parameters' must be an object")
    unknown = sorted(set(parameters) - allowed)
    if unknown:
        overrides = unknown[0] == "config" or unknown[0].startswith("file:")
        why = " (a model's configuration and files come from the models folder)" if overrides else ""
        raise InvalidInferenceRequest(
            f"parameter {unknown[0]!r} is not supported{why}; this request takes "
            f"{', '.join(sorted(allowed)) or 'none'}"
        )
    return parameters


def _rows(registry: ModelRegistry, name: str | None = None) -> list[dict[str, Any]]:
    """The index: one row per protocol model and version, as Triton lists them."""
    rows = []
    for state in registry.index():
        if name is not None and state.name != name:
            continue
        for protocol_name in protocol_names(state.name):
            info = state.info()
            row = {"name": protocol_name, "version": info["version"], "state": info["state"]}
            if info["reason"]:
                row["reason"] = info["reason"]
            row["weights_sha256"] = info["weights_sha256"]
            rows.append(row)
    return rows


@router.post("/index")
async def index(request: Request, state: ReadyState) -> list[dict[str, Any]]:
    """Every model and version in the models folder (scanned now) or in memory; `{"ready": true}` lists
    only those that take requests."""
    body = await off_loop(_object, await request.body())
    only_ready = body.get("ready", False)
    if not isinstance(only_ready, bool):
        raise InvalidInferenceRequest("'ready' must be true or false")
    await state.registry.refresh()
    rows = _rows(state.registry)
    return [row for row in rows if row["state"] == "READY"] if only_ready else rows


@router.post("/models/{name}/load")
async def load(name: str, request: Request, state: ReadyState) -> list[dict[str, Any]]:
    """Serve the latest version on disk (or `parameters.version`): loaded and warmed up beside the serving
    one, then swapped in; already serving those weights: nothing to do. Answers the model's index rows."""
    parameters = await _parameters(request, {"version"})
    version = parameters.get("version")
    if version is not None:
        text = str(version)
        if isinstance(version, bool) or not text.isascii() or not text.isdigit() or not 0 < int(text) < 10**9:
            raise InvalidInferenceRequest("parameter 'version' must be a positive integer")
        version = int(text)
    registry = state.registry
    checkpoint = name
    if not registry.known(name) and name.endswith(SAMPLE_SUFFIX):  # a sampling name: its checkpoint
        checkpoint = name.removesuffix(SAMPLE_SUFFIX)
    await registry.load_version(checkpoint, version)
    return _rows(registry, checkpoint)


@router.post("/models/{name}/unload")
async def unload(name: str, request: Request, state: ReadyState) -> list[dict[str, Any]]:
    """Stop serving the model: new requests get a 404; those it already took finish on it, then its memory
    is released. `unload_dependents` is accepted (no model here depends on another)."""
    await _parameters(request, {"unload_dependents"})
    checkpoint = resolve(name, state.registry).checkpoint
    await state.registry.unload(checkpoint)
    return _rows(state.registry, checkpoint)

"""Liveness (the process answers) and readiness (models loaded and warmed up, not draining)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..auth import presented_key, valid_key
from ..schemas import error_responses
from ..state import State, require_ready

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live", responses=error_responses(500))
async def live() -> dict:
    return {"status": "alive"}


@router.get("/ready", responses=error_responses(500, 503))
async def ready(state: State, request: Request) -> dict:
    """Ready or not; the model names only to callers with the key, where the server has one."""
    registry = require_ready(state)
    key = state.settings.api_key
    if key is not None and not valid_key(presented_key(request.scope["headers"]), key):
        return {"status": "ready"}
    return {"status": "ready", "models": sorted(registry.entries), "default": registry.default}

"""Liveness (the process answers) and readiness (models loaded and warmed up, not draining)."""

from __future__ import annotations

from fastapi import APIRouter

from ..errors import NotReady
from ..schemas import error_responses
from ..state import State

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live", responses=error_responses(500))
async def live() -> dict:
    return {"status": "alive"}


@router.get("/ready", responses=error_responses(500, 503))
async def ready(state: State) -> dict:
    if not state.ready or state.registry is None:
        raise NotReady("not ready: loading, warming up or shutting down")
    return {"status": "ready", "models": sorted(state.registry.entries), "default": state.registry.default}

"""Liveness (the process answers) and readiness (models loaded and warmed up, not draining)."""

from __future__ import annotations

from fastapi import APIRouter

from ..schemas import error_responses
from ..state import State, require_ready

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live", responses=error_responses(500))
async def live() -> dict:
    return {"status": "alive"}


@router.get("/ready", responses=error_responses(500, 503))
async def ready(state: State) -> dict:
    registry = require_ready(state)
    return {"status": "ready", "models": sorted(registry.entries), "default": registry.default}

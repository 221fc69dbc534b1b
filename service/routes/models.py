"""The models this server holds: architecture, shape, size, measured bits/dim, device, backend."""

from __future__ import annotations

from fastapi import APIRouter

from ..schemas import ModelInfo, ModelList
from ..state import Authorized, ReadyState

router = APIRouter(prefix="/models", tags=["models"])


@router.get("", response_model=ModelList)
async def list_models(state: ReadyState, _: Authorized) -> ModelList:
    registry = state.registry
    models = [
        ModelInfo(**e.model.info(), default=name == registry.default)
        for name, e in sorted(registry.entries.items())
    ]
    return ModelList(default=registry.default, models=models)


@router.get("/{name}", response_model=ModelInfo)
async def get_model(name: str, state: ReadyState, _: Authorized) -> ModelInfo:
    entry = state.registry.get(name)
    return ModelInfo(**entry.model.info(), default=name == state.registry.default)

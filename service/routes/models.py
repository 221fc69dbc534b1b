"""The models this server holds: architecture, shape, size, measured bits/dim, device, backend."""

from __future__ import annotations

from fastapi import APIRouter

from ..schemas import ModelInfo, ModelList, error_responses
from ..state import ReadyState

router = APIRouter(prefix="/models", tags=["models"])


@router.get("", response_model=ModelList, responses=error_responses(401, 500, 503))
async def list_models(state: ReadyState) -> ModelList:
    registry = state.registry
    models = [
        ModelInfo(
            **e.model.info(),
            ood=e.model.ood.info(),
            versions=[v.info() for v in registry.versions(name)],
            default=name == registry.default,
        )
        for name, e in sorted(registry.entries.items())
    ]
    return ModelList(default=registry.default, models=models, unavailable=registry.unavailable)


@router.get("/{name}", response_model=ModelInfo, responses=error_responses(401, 404, 422, 500, 503))
async def get_model(name: str, state: ReadyState) -> ModelInfo:
    entry = state.registry.get(name)
    return ModelInfo(
        **entry.model.info(),
        ood=entry.model.ood.info(),
        versions=[v.info() for v in state.registry.versions(name)],
        default=name == state.registry.default,
    )

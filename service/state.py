"""What the app holds while it runs, whether it is ready, and the dependencies that hand it to routes.

The dependencies are `async def`: FastAPI runs sync dependencies on the thread pool, a thread hop each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from .batching import InferenceThread
from .errors import NotReady
from .limits import Limits
from .metrics import Metrics
from .registry import ModelRegistry
from .settings import Settings

__all__ = [
    "AppState",
    "ReadyState",
    "RequestLimits",
    "State",
    "get_state",
    "require_ready",
]


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    inference: InferenceThread
    registry: ModelRegistry | None = None
    ready: bool = False
    extra: dict = field(default_factory=dict)
    limits: Limits = field(init=False)

    def __post_init__(self) -> None:
        self.limits = Limits.from_settings(self.settings)


def require_ready(state: AppState | None, error: type[NotReady] = NotReady) -> ModelRegistry:
    """The registry of a ready app (models loaded and warmed up, not draining); `error` otherwise. The one
    readiness check: inference routes, `/health/ready` and Ray Serve's replica health check use it."""
    if state is None or not state.ready or state.registry is None:
        raise error("not ready: loading, warming up or shutting down")
    return state.registry


async def get_state(request: Request) -> AppState:
    return request.app.state.flows


async def get_ready_state(request: Request) -> AppState:
    state = request.app.state.flows
    require_ready(state)
    return state


async def get_limits(request: Request) -> Limits:
    return request.app.state.flows.limits


State = Annotated[AppState, Depends(get_state)]
ReadyState = Annotated[AppState, Depends(get_ready_state)]
RequestLimits = Annotated[Limits, Depends(get_limits)]

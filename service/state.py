"""What the app holds while it runs, and the dependencies that hand it to routes.

The dependencies are `async def`: FastAPI runs sync dependencies on the thread pool, a thread hop each.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from .batching import InferenceThread
from .errors import NotReady, Unauthorized
from .metrics import Metrics
from .registry import ModelRegistry
from .settings import Settings

__all__ = ["AppState", "Authorized", "ReadyState", "State", "get_state"]


@dataclass
class AppState:
    settings: Settings
    metrics: Metrics
    inference: InferenceThread
    registry: ModelRegistry | None = None
    ready: bool = False
    extra: dict = field(default_factory=dict)


async def get_state(request: Request) -> AppState:
    return request.app.state.flows


async def get_ready_state(request: Request) -> AppState:
    state = request.app.state.flows
    if not state.ready or state.registry is None:
        raise NotReady("the server is starting or shutting down")
    return state


async def require_api_key(request: Request) -> None:
    expected = request.app.state.flows.settings.api_key
    if expected is None:
        return
    given = request.headers.get("x-api-key", "")
    if not secrets.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized("missing or wrong X-API-Key")


State = Annotated[AppState, Depends(get_state)]
ReadyState = Annotated[AppState, Depends(get_ready_state)]
Authorized = Annotated[None, Depends(require_api_key)]

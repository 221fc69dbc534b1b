"""Which model version each request uses, held until its response is sent.

The registry hands a served version to a request under a lease (`hold`); `LeaseMiddleware` opens the
request's list of leases and releases them when the app is done with the request, so that a version being
swapped out is closed only once the requests that took it have been answered (service/registry.py). The
middleware also names the version in `X-Model-Version` when the request used exactly one.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["MODEL_VERSION_HEADER", "LeaseMiddleware", "Leased", "hold"]

MODEL_VERSION_HEADER = "X-Model-Version"


class Leased(Protocol):
    """What can be held by a request: a served version (`ServedEntry`)."""

    @property
    def version_label(self) -> str: ...

    def acquire(self) -> None: ...

    def release(self) -> None: ...


# The leases of the request being handled; None outside a request (start-up, tests of the registry).
_HELD: ContextVar[list[Leased] | None] = ContextVar("flows_leases", default=None)


def hold(entry: Leased) -> None:
    """Hold `entry` for the rest of the current request (once per request; nothing outside one)."""
    held = _HELD.get()
    if held is not None and not any(e is entry for e in held):
        entry.acquire()
        held.append(entry)


class LeaseMiddleware:
    """Pure ASGI: one list of leases per HTTP request, released after the app has sent its response."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: list[Leased] = []
        token = _HELD.set(held)

        async def send_with_version(message: Message) -> None:
            if message["type"] == "http.response.start" and len(held) == 1:
                header = (MODEL_VERSION_HEADER.lower().encode(), held[0].version_label.encode())
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_version)
        finally:
            _HELD.reset(token)
            for entry in held:
                entry.release()

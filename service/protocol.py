"""uvicorn's HTTP protocols with a deadline for the request head: a connection that has not sent a whole
request line and headers within `header_timeout_s` of connecting, or of starting its next request, gets a
408 and is closed. uvicorn itself waits for a head forever (its keep-alive timer stops at the first byte),
so partial or dripped headers would hold a connection for as long as the client likes."""

from __future__ import annotations

import asyncio
import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import RequestTimeout, error_body

__all__ = ["protocol_class"]


def _timeout_response() -> bytes:
    """The raw 408 (the app never sees a request without a head), with the service's error body."""
    error = RequestTimeout("request head not received in time")
    body = json.dumps(error_body(error.code, error.message, None), separators=(",", ":")).encode()
    head = "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    return f"{head}content-length: {len(body)}\r\n\r\n".encode() + body


_TIMEOUT_RESPONSE = _timeout_response()


class _HeadDeadline:
    """Mixin: arm a timer when a request head is awaited, disarm it when the head is complete."""

    header_timeout: float = 10.0
    _head_timer: asyncio.TimerHandle | None = None

    def _arm_head_deadline(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_expired)  # type: ignore[attr-defined]

    def _disarm_head_deadline(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        transport = self.transport  # type: ignore[attr-defined]
        if not transport.is_closing():
            transport.write(_TIMEOUT_RESPONSE)
            transport.close()

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_head_deadline()

    def connection_lost(self, exc) -> None:  # type: ignore[no-untyped-def]
        self._disarm_head_deadline()
        super().connection_lost(exc)  # type: ignore[misc]


class H11HeadDeadline(_HeadDeadline, H11Protocol):
    """The pure-Python protocol: h11's state says whether a head is still awaited."""

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:
            self._arm_head_deadline()
        else:
            self._disarm_head_deadline()


def _httptools_class() -> type | None:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools not installed: uvicorn runs h11
        return None

    class HttpToolsHeadDeadline(_HeadDeadline, HttpToolsProtocol):
        """httptools' callbacks mark where a head starts and ends."""

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm_head_deadline()

        def on_headers_complete(self) -> None:
            self._disarm_head_deadline()
            super().on_headers_complete()

    return HttpToolsHeadDeadline


def protocol_class(header_timeout_s: float) -> type:
    """The protocol uvicorn's "auto" would pick (httptools when installed, else h11), with the deadline."""
    base = _httptools_class() or H11HeadDeadline
    return type(base.__name__, (base,), {"header_timeout": header_timeout_s})

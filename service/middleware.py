"""Pure-ASGI middleware, the outermost layer of the app: request IDs, the API key (401 before the body is
read), the body size limit (413) and read deadline (408), a JSON 500 for anything that escapes the app
(counted and logged, the connection kept), and one JSON log line and metrics per request."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import guarded, presented_key, valid_key
from .batching import InferenceThread
from .errors import InternalError, PayloadTooLarge, RequestTimeout, Unauthorized, send_error
from .metrics import Metrics

__all__ = ["RequestContextMiddleware", "endpoint_label"]

log = logging.getLogger("service.access")
errors = logging.getLogger("service.errors")
_VALID_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_KNOWN = {
    "/sample",
    "/logprob",
    "/models",
    "/health/live",
    "/health/ready",
    "/metrics",
    "/docs",
    "/openapi.json",
    "/encode",
    "/decode",
    "/interpolate",
    "/",
}


def endpoint_label(path: str) -> str:
    """A bounded metrics label for a path."""
    if path in _KNOWN:
        return path
    if path.startswith("/models/"):
        return "/models/{name}"
    if path.startswith("/static/"):
        return "/static"
    return "other"


def _with_deadline(receive: Receive, deadline: float) -> Receive:
    """A receive that raises `RequestTimeout` when the body is not complete by `deadline` (monotonic);
    once it is, later calls (waiting for a disconnect) wait as long as they like."""
    complete = False

    async def receive_body() -> Message:
        nonlocal complete
        if complete:
            return await receive()
        try:
            async with asyncio.timeout_at(asyncio.get_running_loop().time() + deadline - time.monotonic()):
                message = await receive()
        except TimeoutError:
            raise RequestTimeout("the request body did not arrive in time") from None
        complete = message["type"] != "http.request" or not message.get("more_body", False)
        return message

    return receive_body


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that yields the buffered body once, then defers to the real one (disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        max_body_bytes: int,
        inference: InferenceThread,
        body_timeout_s: float = 30.0,
        api_key: str | None = None,
    ):
        self.app, self.metrics, self.max_body_bytes = app, metrics, max_body_bytes
        self.inference = inference  # counts the requests in flight: a batch runs inline only when alone
        self.body_timeout_s, self.api_key = body_timeout_s, api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given, length = "", None
        for key, value in scope.get("headers", ()):  # the two headers we need, without a dict of all
            name = key.lower()
            if name == b"x-request-id":
                given = value.decode("latin1")
            elif name == b"content-length":
                length = value.decode("latin1")
        request_id = given if _VALID_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        scope["state"]["log"] = {}
        status = {"code": 500, "started": False}
        head = scope["method"] == "HEAD"
        if head:  # HEAD wherever GET is served: the GET's status and headers, without its body
            scope = {**scope, "method": "GET"}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            elif head and message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        self.inference.requests_in_flight += 1
        try:
            if self._refused(scope):
                await send_error(send_with_id, Unauthorized("missing or wrong API key"), request_id)
            else:
                receive = _with_deadline(receive, time.monotonic() + self.body_timeout_s)
                await self._forward(scope, receive, send_with_id, length, request_id)
        except RequestTimeout as exc:  # read outside the app (a chunked body being buffered)
            if not status["started"]:
                await send_error(send_with_id, exc, request_id)
        except Exception:
            # Anything the app's handlers did not turn into a response: logged with its traceback, counted,
            # answered as JSON here, so that the server's default handler never resets the connection.
            method, path = scope["method"], scope["path"]
            errors.exception("unhandled error on %s %s (request %s)", method, path, request_id)
            if not status["started"]:
                await send_error(send_with_id, InternalError("internal server error"), request_id)
        finally:
            self.inference.requests_in_flight -= 1
        elapsed = time.perf_counter() - started
        endpoint = endpoint_label(scope["path"])
        self.metrics.requests.labels(endpoint=endpoint, status=str(status["code"])).inc()
        self.metrics.latency.labels(endpoint=endpoint).observe(elapsed)
        if not log.isEnabledFor(logging.INFO):
            return
        record = {
            "request_id": request_id,
            "method": "HEAD" if head else scope["method"],
            "path": scope["path"],
            "status": status["code"],
            "duration_ms": round(elapsed * 1000, 2),
            "client": (scope.get("client") or ("-",))[0],
            **scope["state"]["log"],
        }
        log.info(json.dumps(record, separators=(",", ":")))

    def _refused(self, scope: Scope) -> bool:
        """A guarded path without the server's key (when it has one)."""
        if self.api_key is None or not guarded(scope["path"]):
            return False
        return not valid_key(presented_key(scope.get("headers", [])), self.api_key)

    async def _forward(
        self, scope: Scope, receive: Receive, send: Send, length: str | None, request_id: str
    ) -> None:
        """Pass the request on, or answer 413 when its body is over the limit."""
        if length is not None and length.isdigit():
            if int(length) > self.max_body_bytes:
                await self._reject_too_large(send, request_id)
            else:  # the server enforces Content-Length framing
                await self.app(scope, receive, send)
            return
        body, more, size = [], True, 0  # chunked or unknown length: read up to the limit, then replay
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                break
            body.append(message.get("body", b""))
            more = message.get("more_body", False)
        if size > self.max_body_bytes:
            await self._reject_too_large(send, request_id)
        else:
            await self.app(scope, _replay(b"".join(body), receive), send)

    async def _reject_too_large(self, send: Send, request_id: str) -> None:
        error = PayloadTooLarge(f"request body exceeds {self.max_body_bytes} bytes")
        await send_error(send, error, request_id)

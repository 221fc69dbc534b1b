"""Errors on `/v2` in the Open Inference Protocol's shape, `{"error": "message"}`, from the service's own
`{"error": {"code", "message", "request_id"}}` (the request ID stays in `X-Request-ID`).

Pure ASGI and outermost, so that it covers every error on those paths: the app's handlers, and what the
request middleware answers itself (401 key, 413 body, 408 body deadline, 500). A 422 becomes the protocol's
400 (an input that does not fit the model is a bad request there); every other status stays: 401, 404
unknown model or version, 409 repository conflict, 413, 429/503 with `Retry-After`, 500, 504.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["PROTOCOL_PREFIX", "ProtocolErrorMiddleware", "is_protocol_path", "protocol_error_body"]

PROTOCOL_PREFIX = "/v2"
_STATUS = {422: 400}


def is_protocol_path(path: str) -> bool:
    return path == PROTOCOL_PREFIX or path.startswith(PROTOCOL_PREFIX + "/")


def protocol_error_body(body: bytes) -> bytes:
    """The service's error body as the protocol's (a body in another shape is left as it is)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body
    if not isinstance(parsed, dict) or not isinstance(parsed.get("error"), dict):
        return body
    rest = {k: v for k, v in parsed.items() if k != "error"}
    message = parsed["error"].get("message", "")
    return json.dumps({"error": str(message), **rest}, separators=(",", ":")).encode()


class ProtocolErrorMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_protocol_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def send_protocol(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                content_type = dict(message.get("headers", [])).get(b"content-type", b"")
                if message["status"] >= 400 and content_type.startswith(b"application/json"):
                    start = message  # held until the body is complete
                    return
            elif message["type"] == "http.response.body" and start is not None:
                chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                body = protocol_error_body(b"".join(chunks))
                headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                headers.append((b"content-length", str(len(body)).encode()))
                status = _STATUS.get(start["status"], start["status"])
                await send({**start, "status": status, "headers": headers})
                message = {"type": "http.response.body", "body": body}
            await send(message)

        await self.app(scope, receive, send_protocol)

"""Every error the service answers with, and the one JSON body `{"error": {"code", "message", "request_id"}}`
they are answered with: by the app's handlers, the request middleware and the Ray Serve proxy callback."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

__all__ = [
    "BadRequest",
    "BatchFailed",
    "ClientDisconnected",
    "DeadlineExceeded",
    "InvalidImage",
    "InvalidLatents",
    "NotReady",
    "Overloaded",
    "PayloadTooLarge",
    "ReplicaNotReady",
    "ReplicaUnavailable",
    "ServiceError",
    "TooManyImages",
    "Unauthorized",
    "UnknownModel",
    "UnsupportedMediaType",
    "error_body",
    "install_error_handlers",
    "send_error",
]

log = logging.getLogger("service.errors")


class ServiceError(Exception):
    """Base class: a class-level HTTP status and stable code; the message is shown to the client."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class _Retryable(ServiceError):
    """An error worth retrying after `retry_after_s` (the `Retry-After` header)."""

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message, {"Retry-After": str(retry_after_s)})


# -- 4xx: the request ---------------------------------------------------------------------------------
class BadRequest(ServiceError):
    status, code = 400, "bad_request"


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"


class UnknownModel(ServiceError):
    status, code = 404, "unknown_model"


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class InvalidImage(ServiceError):
    status, code = 422, "invalid_image"


class InvalidLatents(ServiceError):
    status, code = 422, "invalid_latents"


class TooManyImages(ServiceError):
    status, code = 422, "too_many_images"


class ClientDisconnected(ServiceError):
    """The client went away before its result was ready (nginx's 499; nobody reads the answer)."""

    status, code = 499, "client_closed_request"


# -- 5xx: the server ----------------------------------------------------------------------------------
class BatchFailed(ServiceError):
    status, code = 500, "inference_failed"


class Overloaded(_Retryable):
    """The queue is full, or the request would expire in it; the status (503 or 429) is configurable."""

    code = "overloaded"

    def __init__(self, message: str, status: int = 503, retry_after_s: int = 1):
        super().__init__(message, retry_after_s)
        self.status = status


class NotReady(ServiceError):
    status, code = 503, "not_ready"


class ReplicaNotReady(NotReady):
    """A Ray Serve replica's health check while its app is loading, warming up or draining."""


class ReplicaUnavailable(_Retryable):
    """Ray Serve's proxy got no response at all: the replica serving the request stopped."""

    status, code = 503, "replica_unavailable"


class DeadlineExceeded(ServiceError):
    status, code = 504, "deadline_exceeded"


# -- the body -----------------------------------------------------------------------------------------
def error_body(code: str, message: str, request_id: str | None) -> dict:
    """The JSON body of every error response."""
    return {"error": {"code": code, "message": message, "request_id": request_id}}


def _json(status: int, code: str, message: str, request_id: str | None, headers: Mapping[str, str]):
    return JSONResponse(error_body(code, message, request_id), status_code=status, headers=dict(headers))


async def send_error(
    send: Send, error: ServiceError, request_id: str | None, headers: Mapping[str, str] | None = None
) -> None:
    """Answer `error` on a raw ASGI `send` (middleware that runs outside the app's handlers)."""
    body = json.dumps(error_body(error.code, error.message, request_id), separators=(",", ":")).encode()
    fields = {"content-type": "application/json", "content-length": str(len(body))}
    fields.update({k.lower(): v for k, v in {**error.headers, **(headers or {})}.items()})
    raw = [(k.encode("latin1"), v.encode("latin1")) for k, v in fields.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def install_error_handlers(app: FastAPI) -> None:
    """Map every error to the JSON body; 5xx bodies never show internals."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return _json(exc.status, exc.code, exc.message, _request_id(request), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        code = "malformed_json" if first.get("type") == "json_invalid" else "invalid_request"
        message = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        status = 400 if code == "malformed_json" else 422
        return _json(status, code, message, _request_id(request), {})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = getattr(exc, "headers", None) or {}
        return _json(exc.status_code, code, str(exc.detail), _request_id(request), headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _json(500, "internal_error", "internal server error", _request_id(request), {})

"""One error hierarchy, mapped to JSON `{"error": {"code", "message", "request_id"}}` in one place."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = [
    "BadRequest",
    "BatchFailed",
    "DeadlineExceeded",
    "InvalidImage",
    "NotReady",
    "Overloaded",
    "PayloadTooLarge",
    "ServiceError",
    "TooManyImages",
    "Unauthorized",
    "UnknownModel",
    "error_body",
    "install_error_handlers",
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


class BadRequest(ServiceError):
    status, code = 400, "bad_request"


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"


class UnknownModel(ServiceError):
    status, code = 404, "unknown_model"


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class InvalidImage(ServiceError):
    status, code = 422, "invalid_image"


class TooManyImages(ServiceError):
    status, code = 422, "too_many_images"


class Overloaded(ServiceError):
    """The queue is full; the status (503 or 429) is configurable."""

    code = "overloaded"

    def __init__(self, message: str, status: int = 503, retry_after_s: int = 1):
        super().__init__(message, {"Retry-After": str(retry_after_s)})
        self.status = status


class NotReady(ServiceError):
    status, code = 503, "not_ready"


class DeadlineExceeded(ServiceError):
    status, code = 504, "deadline_exceeded"


class BatchFailed(ServiceError):
    status, code = 500, "inference_failed"


def error_body(status: int, code: str, message: str, request_id: str | None) -> dict:
    return {"error": {"code": code, "message": message, "request_id": request_id}}


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def install_error_handlers(app: FastAPI) -> None:
    """Map every error to the JSON body; 5xx bodies never show internals."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        body = error_body(exc.status, exc.code, exc.message, _request_id(request))
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

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
        return JSONResponse(error_body(status, code, message, _request_id(request)), status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        body = error_body(exc.status_code, code, str(exc.detail), _request_id(request))
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        body = error_body(500, "internal_error", "internal server error", _request_id(request))
        return JSONResponse(body, status_code=500)

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
    "InternalError",
    "InvalidImage",
    "InvalidInferenceRequest",
    "InvalidLatents",
    "ModelLoadFailed",
    "ModelNotLoaded",
    "NotReady",
    "OodUnavailable",
    "Overloaded",
    "PayloadTooLarge",
    "ReplicaNotReady",
    "ReplicaUnavailable",
    "RepositoryConflict",
    "RequestTimeout",
    "ServiceError",
    "TooManyImages",
    "Unauthorized",
    "UnknownModel",
    "UnsupportedMediaType",
    "closest_union_member",
    "error_body",
    "error_path",
    "install_error_handlers",
    "send_error",
]

log = logging.getLogger("service.errors")


class ServiceError(Exception):
    """Base class: a class-level HTTP status and stable code, given as class arguments
    (`class X(ServiceError, status=..., code=...)`); the message is shown to the client."""

    status: int = 500
    code: str = "internal_error"

    def __init_subclass__(cls, status: int | None = None, code: str | None = None, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls.status = cls.status if status is None else status
        cls.code = cls.code if code is None else code

    def __init__(self, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class _Retryable(ServiceError):
    """An error worth retrying after `retry_after_s` (the `Retry-After` header)."""

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message, {"Retry-After": str(retry_after_s)})


# -- 4xx: the request ---------------------------------------------------------------------------------
class BadRequest(ServiceError, status=400, code="bad_request"):
    """A body that cannot be parsed as what its content type says (malformed multipart, no files)."""


class Unauthorized(ServiceError, status=401, code="unauthorized"):
    """A missing or wrong key (`X-API-Key` or `Authorization: Bearer`) on a server that has one."""

    def __init__(self, message: str):
        super().__init__(message, {"WWW-Authenticate": "Bearer"})


class UnknownModel(ServiceError, status=404, code="unknown_model"):
    """A model name the server does not hold."""


class ModelNotLoaded(UnknownModel, code="model_not_loaded"):
    """A model (or version) on disk that serves no requests now: unloaded, failed to load, or not the
    version being served."""


class InvalidInferenceRequest(ServiceError, status=400, code="invalid_inference_request"):
    """An Open Inference Protocol request whose JSON, tensors or parameters do not fit the model it names
    (service/oip.py names the tensor and what was expected)."""


class ModelLoadFailed(ServiceError, status=400, code="model_load_failed"):
    """A repository load whose checkpoint did not load or warm up; the version serving before keeps
    serving, and the message names the file and the reason."""


class RepositoryConflict(ServiceError, status=409, code="repository_conflict"):
    """A repository request the served models' state refuses (unloading the server's default model)."""


class PayloadTooLarge(ServiceError, status=413, code="payload_too_large"):
    """A body over `max_body_bytes` (refused by the request middleware before it is read in full)."""


class UnsupportedMediaType(ServiceError, status=415, code="unsupported_media_type"):
    """A body in a content type the endpoint does not take (JSON endpoints: application/json only)."""


class RequestTimeout(ServiceError, status=408, code="request_timeout"):
    """The client did not send its whole body within `body_timeout_s`; the connection is closed."""

    def __init__(self, message: str):
        super().__init__(message, {"Connection": "close"})


class InvalidImage(ServiceError, status=422, code="invalid_image"):
    """An image that does not decode, or not to the model's shape and the pixel range; names the image."""


class InvalidLatents(ServiceError, status=422, code="invalid_latents"):
    """Latents that are not one array per level of the model's latent shapes; names the level."""


class OodUnavailable(ServiceError, status=422, code="ood_unavailable"):
    """`ood: true` for a model without usable out-of-distribution statistics; names the command that
    makes them (`flowserve ood CHECKPOINT`)."""


class TooManyImages(ServiceError, status=422, code="too_many_images"):
    """More images in one request than the server's per-request limits (service/limits.py)."""


class ClientDisconnected(ServiceError, status=499, code="client_closed_request"):
    """The client went away before its result was ready (nginx's 499; nobody reads the answer)."""


# -- 5xx: the server ----------------------------------------------------------------------------------
class InternalError(ServiceError, status=500, code="internal_error"):
    """Anything no other error describes; the traceback goes to the server log, never to the client."""


class BatchFailed(ServiceError, status=500, code="inference_failed"):
    """The batch this request was in raised; the details are in the server log only."""


class Overloaded(_Retryable, code="overloaded"):
    """The queue is full, or the request would expire in it; the status (503 or 429) is configurable."""

    def __init__(self, message: str, status: int = 503, retry_after_s: int = 1):
        super().__init__(message, retry_after_s)
        self.status = status


class NotReady(ServiceError, status=503, code="not_ready"):
    """Loading, warming up or shutting down."""


class ReplicaNotReady(NotReady):
    """A Ray Serve replica's health check while its app is loading, warming up or draining."""


class ReplicaUnavailable(_Retryable, status=503, code="replica_unavailable"):
    """Ray Serve's proxy got no response at all: the replica serving the request stopped."""


class DeadlineExceeded(ServiceError, status=504, code="deadline_exceeded"):
    """The request's deadline passed while it was queued."""


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


def _is_member_tag(part: object) -> bool:
    """pydantic names the union member an error belongs to with a tag like `list[list[constrained-int]]`."""
    return isinstance(part, str) and ("[" in part or "-" in part)


def _distance(errors: list[dict]) -> tuple[bool, int, int]:
    wrong_type = all(e.get("type", "").endswith("_type") for e in errors)
    return wrong_type, len(errors), -max(len(e["loc"]) for e in errors)


def closest_union_member(errors: list[dict]) -> list[dict]:
    """Of a union's members, keep the errors of the one the input came closest to (not of a type it
    never was, then fewest errors, then the deepest): a nested pixel array with one bad pixel is that
    pixel's error, not a string error and 784 others from the members it never was."""
    by_union: dict[tuple, dict[str, list[dict]]] = {}
    for error in errors:
        loc = tuple(error.get("loc", ()))
        at = next((i for i, part in enumerate(loc) if _is_member_tag(part)), None)
        if at is not None:
            by_union.setdefault(loc[:at], {}).setdefault(loc[at], []).append(error)
    chosen = {id(e) for members in by_union.values() for e in min(members.values(), key=_distance)}
    return [
        e for e in errors if id(e) in chosen or not any(_is_member_tag(part) for part in e.get("loc", ()))
    ]


def error_path(loc: tuple | list) -> str:
    """`("body", "images", 0, "list[...]", 3, 5)` → `images.0.3.5`: the field, then the indices."""
    return ".".join(str(part) for part in loc if part != "body" and not _is_member_tag(part))


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def install_error_handlers(app: FastAPI) -> None:
    """Map every error to the JSON body; 5xx bodies never show internals."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return _json(exc.status, exc.code, exc.message, _request_id(request), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = closest_union_member(list(exc.errors()))
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        where = error_path(first.get("loc", ()))
        code = "malformed_json" if first.get("type") == "json_invalid" else "invalid_request"
        text = str(first.get("msg")).removeprefix("Value error, ")
        message = f"{where}: {text}" if where else text
        if "input" in first and not isinstance(first["input"], dict | list) and code != "malformed_json":
            message += f" (got {str(first['input'])[:40]!r})"
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        status = 400 if code == "malformed_json" else 422
        return _json(status, code, message, _request_id(request), {})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, ServiceError):  # FastAPI wraps what reading the body raised (a 408)
            return await _service_error(request, exc.__cause__)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = getattr(exc, "headers", None) or {}
        return _json(exc.status_code, code, str(exc.detail), _request_id(request), headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _json(500, "internal_error", "internal server error", _request_id(request), {})

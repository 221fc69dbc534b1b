"""JSON request bodies read, parsed and validated off the event loop, and the other CPU work of decoding a
request (images, latents) likewise, so that no request body holds the loop: a 16 MB array of floats takes
seconds to parse, during which the loop would answer nothing else, health checks included."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from .errors import PayloadTooLarge, UnsupportedMediaType

__all__ = ["json_body", "json_body_openapi", "off_loop", "parse_json", "read_json", "register_schemas"]

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

# Parsing and decoding threads: beside the event loop and the inference threads; pydantic and numpy keep
# the GIL for a while at a time, but Python hands it back to the loop every few milliseconds.
_POOL = ThreadPoolExecutor(2, thread_name_prefix="decode")


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` on a decoding thread."""
    return await asyncio.get_running_loop().run_in_executor(_POOL, functools.partial(fn, *args))


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def parse_json(model: type[M], raw: bytes) -> M:
    """`raw` as `model`: `json.loads` (C, quick; the one step that keeps the GIL throughout, which the
    JSON body limit bounds), then validation in Python mode, whose element checks of nested arrays are
    Python code (`schemas.nested_numbers`) during which the event loop gets the GIL every few ms."""
    try:
        data = json.loads(raw)  # NaN and Infinity parse, as pydantic's parser lets them: checks name them
    except ValueError as exc:  # malformed JSON or bad UTF-8
        error = {"type": "json_invalid", "loc": ("body",), "msg": f"JSON decode error: {exc}"}
        raise RequestValidationError([error]) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


async def read_json(request: Request, model: type[M]) -> M:
    """The body as `model`, from `application/json` only (415 otherwise), within the server's JSON body
    limit (413), parsed and validated on a decoding thread (422 naming the first problem)."""
    content_type = _content_type(request)
    if content_type != "application/json":
        raise UnsupportedMediaType(
            f"content type {content_type or '(none)'!r} is not supported: use application/json"
        )
    raw = await request.body()
    limit = request.app.state.flows.settings.max_json_bytes
    if len(raw) > limit:
        raise PayloadTooLarge(
            f"a JSON body of {len(raw)} bytes is over this server's limit of {limit} (send images as files "
            "or base64, latents as base64 .npy)"
        )
    return await off_loop(parse_json, model, raw)


def json_body(model: type[M]) -> Callable[[Request], Awaitable[M]]:
    """A dependency: the request body as `model` (`read_json`)."""

    async def read(request: Request) -> M:
        return await read_json(request, model)

    return read


def json_body_openapi(model: type[BaseModel]) -> dict[str, Any]:
    """The `openapi_extra` that documents a `json_body(model)` route's body as FastAPI would a parameter."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def register_schemas(spec: dict[str, Any], models: Iterable[type[BaseModel]]) -> dict[str, Any]:
    """Add the request models of `json_body` routes (and the models they nest) to the document's
    components, where `json_body_openapi` refers to them."""
    components = spec.setdefault("components", {}).setdefault("schemas", {})
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    return spec

"""JSON request bodies read, parsed and validated off the event loop, and the other CPU work of decoding a
request (images, latents) likewise, so that no request body holds the loop: a 16 MB array of floats takes
seconds to parse, during which the loop would answer nothing else, health checks included."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from .errors import UnsupportedMediaType

__all__ = ["json_body", "json_body_openapi", "off_loop", "register_schemas"]

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


def json_body(model: type[M]) -> Callable[[Request], Awaitable[M]]:
    """A dependency: the request body as `model`, from `application/json` only (415 otherwise), validated
    on a decoding thread (422 naming the first problem, as FastAPI's own body parameters do)."""

    async def read(request: Request) -> M:
        content_type = _content_type(request)
        if content_type != "application/json":
            raise UnsupportedMediaType(
                f"content type {content_type or '(none)'!r} is not supported: use application/json"
            )
        raw = await request.body()
        try:
            return await off_loop(model.model_validate_json, raw)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None

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

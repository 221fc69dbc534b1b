"""What the inference routes share: the checked request (`Call`), disconnect-aware waiting, timings and
responses."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch
from fastapi import Request, Response
from pydantic import BaseModel

from model.images import encode_png, image_grid

from ..batching import BatchResult
from ..codec import npy_bytes
from ..errors import ClientDisconnected
from ..registry import ServedEntry
from ..schemas import Timings

__all__ = ["Call", "json_response", "raw_images_response", "timings", "until_disconnect"]

T = TypeVar("T")
Body = TypeVar("Body")
Inputs = TypeVar("Inputs")


@dataclass(frozen=True)
class Call(Generic[Body, Inputs]):
    """A request as a route's dependency hands it over: its body, checked against this server's limits,
    the served model it names, and what the body decodes to for that model (`None` where nothing does)."""

    body: Body
    entry: ServedEntry
    inputs: Inputs


async def _cancel_on_disconnect(request: Request, task: asyncio.Task) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            task.cancel()
            return


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work` in this task, cancelling it (and so its queued batches) if the client goes away first.
    One watcher task per request and no `asyncio.wait`: this sits on every inference request's path."""
    task = asyncio.current_task()
    assert task is not None
    watcher = asyncio.create_task(_cancel_on_disconnect(request, task))
    try:
        return await work
    except asyncio.CancelledError:
        if not watcher.done() or watcher.cancelled():
            raise  # cancelled from outside (server shutdown), not by the watcher
        task.uncancel()
        raise ClientDisconnected("client disconnected before the result was ready") from None
    finally:
        watcher.cancel()


def json_response(body: BaseModel, headers: dict[str, str] | None = None) -> Response:
    """A response model serialised once, by pydantic-core: FastAPI's `response_model` path would dump,
    re-validate and dump it again (the route's `response_model` still documents it in OpenAPI)."""
    return Response(body.model_dump_json(), media_type="application/json", headers=headers)


def timings(started: float, results: list[BatchResult]) -> Timings:
    """A request's timings since `started` (perf_counter); a request that went through several batchers
    in turn adds up their queue and inference times."""
    return Timings(
        queue_ms=round(sum(r.queue_s for r in results) * 1e3, 3),
        inference_ms=round(sum(r.inference_s for r in results) * 1e3, 3),
        total_ms=round((time.perf_counter() - started) * 1e3, 3),
    )


def raw_images_response(request: Request, images: torch.Tensor, headers: dict[str, str]) -> Response | None:
    """PNG (one image, or a grid of several) or `.npy` bytes when `Accept` asks for them, first match wins."""
    for part in request.headers.get("accept", "").split(","):
        media = part.split(";")[0].strip().lower()
        if media == "image/png":
            png = encode_png(images[0] if images.shape[0] == 1 else image_grid(images))
            return Response(png, media_type="image/png", headers=headers)
        if media == "application/x-npy":
            return Response(npy_bytes(images.numpy()), media_type="application/x-npy", headers=headers)
    return None

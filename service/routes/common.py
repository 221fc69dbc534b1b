"""Helpers shared by the inference routes: disconnect-aware waiting, sample limits and raw image responses."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import torch
from fastapi import Request, Response

from model.images import encode_png, image_grid

from ..errors import ServiceError, TooManyImages
from ..latentio import npy_bytes
from ..settings import Settings

T = TypeVar("T")


class ClientDisconnected(ServiceError):
    status, code = 499, "client_closed_request"


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it (and so its queued batches) if the client goes away first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    raise ClientDisconnected("client disconnected before the result was ready")


def check_sample_count(n: int, what: str, settings: Settings) -> None:
    """Refuse more generated images per request than the server allows."""
    if n > settings.max_samples_per_request:
        raise TooManyImages(f"{what} {n} exceeds this server's limit of {settings.max_samples_per_request}")


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

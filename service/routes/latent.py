"""POST /encode, /decode, /interpolate: the latent space of a flow, through the same batchers as
/sample (decoding) and /logprob's images (encoding), with the same limits, errors and metrics."""

from __future__ import annotations

import time

import torch
from fastapi import APIRouter, Request, Response

from model.interpolation import interpolate_latents

from ..batching import BatchResult
from ..imageio import images_to_tensor
from ..latent_schemas import (
    DecodeRequest,
    DecodeResponse,
    EncodeRequest,
    EncodeResponse,
    InterpolateRequest,
    InterpolateResponse,
    InterpolationEndpoint,
)
from ..latentio import images_payload, latents_payload, latents_to_tensors
from ..operations import EncodeInput, LatentsInput
from ..registry import ServedEntry
from ..schemas import error_responses
from ..state import AppState, Authorized, ReadyState
from .common import (
    check_image_count,
    check_sample_count,
    json_response,
    raw_images_response,
    timings,
    until_disconnect,
)

router = APIRouter(tags=["latent space"])

# Every status an operation can return, with the error schema (the fuzz test checks each one).
_ERRORS = error_responses(400, 401, 404, 413, 422, 500, 503, 504)
_IMAGE_RESPONSES = {
    200: {
        "content": {
            "image/png": {"description": "one PNG (1 image) or a grid, with `Accept: image/png`"},
            "application/x-npy": {"description": "uint8 (N, C, H, W), with `Accept: application/x-npy`"},
        }
    },
    **_ERRORS,
}


def _raw_response(request: Request, images: torch.Tensor, model: str) -> Response | None:
    """Raw PNG / .npy bytes when `Accept` asks for them, as /sample does."""
    return raw_images_response(request, images, {"X-Model": model, "X-Num-Images": str(images.shape[0])})


async def _decode(
    request: Request, state: AppState, entry: ServedEntry, latents: list[torch.Tensor]
) -> BatchResult:
    result = await until_disconnect(
        request, entry.sample.submit(LatentsInput(tuple(latents)), state.settings.request_timeout_s)
    )
    state.metrics.images_generated.labels(model=entry.model.name).inc(latents[0].shape[0])
    return result


def _images_response(
    cls: type[DecodeResponse], request: Request, entry: ServedEntry, images: torch.Tensor, fmt: str, **extra
):
    raw = _raw_response(request, images, entry.model.name)
    if raw is not None:
        return raw
    return json_response(
        cls(
            model=entry.model.name,
            num_images=images.shape[0],
            image_shape=list(entry.model.image_shape),
            format=fmt,
            **extra,
            **images_payload(images, fmt),
        )
    )


@router.post("/encode", response_model=EncodeResponse, responses=_ERRORS)
async def encode(body: EncodeRequest, request: Request, state: ReadyState, _: Authorized) -> Response:
    """Images → latents per level (finest first) and log|det ∂z/∂x|. /decode of these latents gives the
    images back; with `dequantization: hashed`, log N(z) + log_det is /logprob's value (K = 1)."""
    started = time.perf_counter()
    settings = state.settings
    check_image_count(len(body.images), settings.max_images_per_request)
    entry = state.registry.get(body.model)
    labels = [f"images[{i}]" for i in range(len(body.images))]
    images = images_to_tensor(body.images, entry.model.image_shape, labels)
    hashed = torch.full((len(body.images),), body.dequantization == "hashed")
    result = await until_disconnect(
        request, entry.encode.submit(EncodeInput(images, hashed), settings.request_timeout_s)
    )
    encoded = result.output
    request.state.log.update(model=entry.model.name, images=len(body.images))
    return json_response(
        EncodeResponse(
            model=entry.model.name,
            num_images=len(body.images),
            format=body.format,
            dequantization=body.dequantization,
            latent_shapes=[list(s) for s in entry.model.flow.latent_shapes()],
            latents=latents_payload(list(encoded.latents), body.format),
            log_det=encoded.log_det.tolist(),
            log_prob=encoded.log_prob.tolist(),
            timings=timings(started, [result]),
        )
    )


@router.post("/decode", response_model=DecodeResponse, responses=_IMAGE_RESPONSES)
async def decode(body: DecodeRequest, request: Request, state: ReadyState, _: Authorized):
    """Latents (one array per level, as /encode returns them) → images. Shares /sample's batches."""
    started = time.perf_counter()
    entry = state.registry.get(body.model)
    latents = latents_to_tensors(body.latents, entry.model.flow.latent_shapes())
    n = latents[0].shape[0]
    check_sample_count(n, "number of images", state.settings)
    result = await _decode(request, state, entry, latents)
    request.state.log.update(model=entry.model.name, images=n)
    return _images_response(
        DecodeResponse, request, entry, result.output, body.format, timings=timings(started, [result])
    )


async def _endpoint_latents(
    request: Request, state: AppState, entry: ServedEntry, ends: dict[str, InterpolationEndpoint]
) -> tuple[dict[str, list[torch.Tensor]], list[BatchResult]]:
    """Each end's latents: a seed's drawn as /sample draws them, images' encoded in one request."""
    out: dict[str, list[torch.Tensor]] = {}
    for name, end in ends.items():
        if end.seed is not None:
            out[name] = entry.model.draw_latents(1, end.temperature, end.seed)
    with_images = [name for name, end in ends.items() if end.image is not None]
    if not with_images:
        return out, []
    images = images_to_tensor(
        [ends[name].image for name in with_images],
        entry.model.image_shape,
        [f"{n}.image" for n in with_images],
    )
    hashed = torch.tensor([ends[name].dequantization == "hashed" for name in with_images])
    result = await until_disconnect(
        request, entry.encode.submit(EncodeInput(images, hashed), state.settings.request_timeout_s)
    )
    for i, name in enumerate(with_images):
        out[name] = [z[i : i + 1] for z in result.output.latents]
    return out, [result]


@router.post("/interpolate", response_model=InterpolateResponse, responses=_IMAGE_RESPONSES)
async def interpolate(body: InterpolateRequest, request: Request, state: ReadyState, _: Authorized):
    """The path between two images or seeds in latent space (all levels together), decoded: `steps`
    images from `start` to `end`, both included; `spherical` (slerp, default) or `linear`."""
    started = time.perf_counter()
    check_sample_count(body.steps, "steps", state.settings)
    entry = state.registry.get(body.model)
    ends, results = await _endpoint_latents(request, state, entry, {"start": body.start, "end": body.end})
    path, t = interpolate_latents(ends["start"], ends["end"], body.steps, body.method)
    results.append(await _decode(request, state, entry, path))
    request.state.log.update(model=entry.model.name, images=body.steps)
    return _images_response(
        InterpolateResponse,
        request,
        entry,
        results[-1].output,
        body.format,
        steps=body.steps,
        method=body.method,
        t=t,
        timings=timings(started, results),
    )

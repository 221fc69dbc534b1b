"""POST /encode, /decode, /interpolate: the latent space of a flow, through the same batchers as
/sample (decoding) and /logprob's images (encoding), with the same limits, errors and metrics."""

from __future__ import annotations

import time
from typing import Annotated

import torch
from fastapi import APIRouter, Depends, Request, Response

from model.interpolation import interpolate_latents

from ..batching import BatchResult
from ..bodies import json_body, json_body_openapi, off_loop
from ..codec import images_payload, images_to_tensor, latents_payload, latents_to_tensors
from ..latent_schemas import (
    DecodeRequest,
    DecodeResponse,
    EncodeRequest,
    EncodeResponse,
    InterpolateRequest,
    InterpolateResponse,
    InterpolationEndpoint,
)
from ..operations import EncodeInput, LatentsInput
from ..registry import ServedEntry
from ..schemas import error_responses
from ..state import AppState, ReadyState, RequestLimits
from .common import Call, json_response, raw_images_response, timings, until_disconnect

router = APIRouter(tags=["latent space"])

# Every status an operation can return, with the error schema (the fuzz test checks each one).
_ERRORS = error_responses(400, 401, 404, 413, 415, 422, 500, 503, 504)
_IMAGE_RESPONSES = {
    200: {
        "content": {
            "image/png": {"description": "one PNG (1 image) or a grid, with `Accept: image/png`"},
            "application/x-npy": {"description": "uint8 (N, C, H, W), with `Accept: application/x-npy`"},
        }
    },
    **_ERRORS,
}
EncodeCall = Call[EncodeRequest, EncodeInput]
DecodeCall = Call[DecodeRequest, LatentsInput]
InterpolateCall = Call[InterpolateRequest, None]


def _encode_input(images: torch.Tensor, ends: list[InterpolationEndpoint | EncodeRequest]) -> EncodeInput:
    return EncodeInput(images, torch.tensor([end.dequantization == "hashed" for end in ends]))


async def encode_call(
    body: Annotated[EncodeRequest, Depends(json_body(EncodeRequest))],
    state: ReadyState,
    limits: RequestLimits,
) -> EncodeCall:
    limits.check_images(len(body.images))
    entry = state.registry.get(body.model)
    labels = [f"images[{i}]" for i in range(len(body.images))]
    images = await off_loop(images_to_tensor, body.images, entry.model.image_shape, labels)
    return Call(body, entry, _encode_input(images, [body] * len(body.images)))


async def decode_call(
    body: Annotated[DecodeRequest, Depends(json_body(DecodeRequest))],
    state: ReadyState,
    limits: RequestLimits,
) -> DecodeCall:
    entry = state.registry.get(body.model)
    shapes = entry.model.flow.latent_shapes()
    latents = await off_loop(latents_to_tensors, body.latents, shapes)
    limits.check_samples(latents[0].shape[0], "number of images")
    return Call(body, entry, LatentsInput(tuple(latents)))


async def interpolate_call(
    body: Annotated[InterpolateRequest, Depends(json_body(InterpolateRequest))],
    state: ReadyState,
    limits: RequestLimits,
) -> InterpolateCall:
    limits.check_samples(body.steps, "steps")
    return Call(body, state.registry.get(body.model), None)


def _raw_response(request: Request, images: torch.Tensor, model: str) -> Response | None:
    """Raw PNG / .npy bytes when `Accept` asks for them, as /sample does."""
    return raw_images_response(request, images, {"X-Model": model, "X-Num-Images": str(images.shape[0])})


async def _decode(
    request: Request, state: AppState, entry: ServedEntry, latents: LatentsInput
) -> BatchResult:
    result = await until_disconnect(request, entry.sample.submit(latents, state.settings.request_timeout_s))
    state.metrics.images_generated.labels(model=entry.model.name).inc(latents.latents[0].shape[0])
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
            model_version=entry.version_label,
            num_images=images.shape[0],
            image_shape=list(entry.model.image_shape),
            format=fmt,
            **extra,
            **images_payload(images, fmt),
        )
    )


@router.post(
    "/encode",
    response_model=EncodeResponse,
    responses=_ERRORS,
    openapi_extra=json_body_openapi(EncodeRequest),
)
async def encode(
    call: Annotated[EncodeCall, Depends(encode_call)], request: Request, state: ReadyState
) -> Response:
    """Images → latents per level (finest first) and log|det ∂z/∂x|. /decode of these latents gives the
    images back; with `dequantization: hashed`, log N(z) + log_det is /logprob's value (K = 1)."""
    started = time.perf_counter()
    body, entry = call.body, call.entry
    result = await until_disconnect(
        request, entry.encode.submit(call.inputs, state.settings.request_timeout_s)
    )
    encoded = result.output
    request.state.log.update(model=entry.model.name, images=len(body.images))
    return json_response(
        EncodeResponse(
            model=entry.model.name,
            model_version=entry.version_label,
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


@router.post(
    "/decode",
    response_model=DecodeResponse,
    responses=_IMAGE_RESPONSES,
    openapi_extra=json_body_openapi(DecodeRequest),
)
async def decode(call: Annotated[DecodeCall, Depends(decode_call)], request: Request, state: ReadyState):
    """Latents (one array per level, as /encode returns them) → images. Shares /sample's batches."""
    started = time.perf_counter()
    result = await _decode(request, state, call.entry, call.inputs)
    request.state.log.update(model=call.entry.model.name, images=result.output.shape[0])
    return _images_response(
        DecodeResponse,
        request,
        call.entry,
        result.output,
        call.body.format,
        timings=timings(started, [result]),
    )


async def _endpoint_latents(
    request: Request, state: AppState, entry: ServedEntry, ends: dict[str, InterpolationEndpoint]
) -> tuple[dict[str, list[torch.Tensor]], dict[str, torch.Tensor], list[BatchResult]]:
    """Each end's latents (a seed's drawn as /sample draws them, images' encoded in one request), and the
    end images as given."""
    out: dict[str, list[torch.Tensor]] = {}
    for name, end in ends.items():
        if end.seed is not None:
            out[name] = entry.model.draw_latents(1, end.temperature, end.seed)
    with_images = [name for name, end in ends.items() if end.image is not None]
    if not with_images:
        return out, {}, []
    images = await off_loop(
        images_to_tensor,
        [ends[name].image for name in with_images],
        entry.model.image_shape,
        [f"{n}.image" for n in with_images],
    )
    inputs = _encode_input(images, [ends[name] for name in with_images])
    result = await until_disconnect(request, entry.encode.submit(inputs, state.settings.request_timeout_s))
    for i, name in enumerate(with_images):
        out[name] = [z[i : i + 1] for z in result.output.latents]
    return out, {name: images[i] for i, name in enumerate(with_images)}, [result]


@router.post(
    "/interpolate",
    response_model=InterpolateResponse,
    responses=_IMAGE_RESPONSES,
    openapi_extra=json_body_openapi(InterpolateRequest),
)
async def interpolate(
    call: Annotated[InterpolateCall, Depends(interpolate_call)], request: Request, state: ReadyState
):
    """The path between two images or seeds in latent space (all levels together), decoded: `steps`
    images from `start` to `end`, both included; `spherical` (slerp, default) or `linear`."""
    started = time.perf_counter()
    body, entry = call.body, call.entry
    ends = {"start": body.start, "end": body.end}
    latents, given, results = await _endpoint_latents(request, state, entry, ends)
    path, t = interpolate_latents(latents["start"], latents["end"], body.steps, body.method)
    results.append(await _decode(request, state, entry, LatentsInput(tuple(path))))
    frames = results[-1].output
    # An image end's frame is the image itself unless the model's inverse is ill-conditioned there
    # (images far outside its training data: docs/math.md §9).
    reconstructed = [
        bool(torch.equal(frames[i], given[name])) if name in given else None
        for i, name in ((0, "start"), (-1, "end"))
    ]
    request.state.log.update(model=entry.model.name, images=body.steps)
    return _images_response(
        InterpolateResponse,
        request,
        entry,
        frames,
        body.format,
        steps=body.steps,
        method=body.method,
        t=t,
        endpoints_reconstructed=reconstructed,
        timings=timings(started, results),
    )

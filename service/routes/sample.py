"""POST /sample: images from a model, each request with its own seeded noise."""

from __future__ import annotations

import secrets
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from ..bodies import json_body, json_body_openapi
from ..codec import images_payload
from ..operations import LatentsInput
from ..schemas import MAX_SEED, SampleRequest, SampleResponse, error_responses
from ..state import ReadyState, RequestLimits
from .common import Call, json_response, raw_images_response, timings, until_disconnect

router = APIRouter(tags=["inference"])
SampleCall = Call[SampleRequest, None]


async def sample_call(
    body: Annotated[SampleRequest, Depends(json_body(SampleRequest))],
    state: ReadyState,
    limits: RequestLimits,
) -> SampleCall:
    entry = state.registry.get(body.model)
    limits.check_samples(body.num_samples, "num_samples")
    return Call(body, entry, None)


@router.post(
    "/sample",
    response_model=SampleResponse,
    openapi_extra=json_body_openapi(SampleRequest),
    responses={
        200: {
            "content": {
                "image/png": {"description": "one PNG (1 sample) or a grid, with `Accept: image/png`"},
                "application/x-npy": {"description": "uint8 (N, C, H, W), with `Accept: application/x-npy`"},
            }
        },
        **error_responses(400, 401, 404, 413, 415, 422, 500, 503, 504),
    },
)
async def sample(call: Annotated[SampleCall, Depends(sample_call)], request: Request, state: ReadyState):
    """Generate `num_samples` images. The same seed gives the same images, however requests are batched."""
    started = time.perf_counter()
    body, entry = call.body, call.entry
    seed = body.seed if body.seed is not None else secrets.randbelow(MAX_SEED + 1)
    latents = entry.model.draw_latents(body.num_samples, body.temperature, seed)
    result = await until_disconnect(
        request, entry.sample.submit(LatentsInput(tuple(latents)), state.settings.request_timeout_s)
    )
    images = result.output
    state.metrics.images_generated.labels(model=entry.model.name).inc(body.num_samples)
    request.state.log.update(model=entry.model.name, images=body.num_samples, seed=seed)
    headers = {"X-Model": entry.model.name, "X-Seed": str(seed), "X-Num-Samples": str(body.num_samples)}
    raw = raw_images_response(request, images, headers)
    if raw is not None:
        return raw
    return json_response(
        SampleResponse(
            model=entry.model.name,
            model_version=entry.version_label,
            seed=seed,
            temperature=body.temperature,
            num_samples=body.num_samples,
            image_shape=list(entry.model.image_shape),
            format=body.format,
            timings=timings(started, [result]),
            **images_payload(images, body.format),
        )
    )

"""POST /sample: images from a model, each request with its own seeded noise."""

from __future__ import annotations

import secrets
import time

from fastapi import APIRouter, Request

from ..latentio import images_payload
from ..operations import LatentsInput
from ..schemas import MAX_SEED, SampleRequest, SampleResponse, error_responses
from ..state import Authorized, ReadyState
from .common import check_sample_count, json_response, raw_images_response, timings, until_disconnect

router = APIRouter(tags=["inference"])


@router.post(
    "/sample",
    response_model=SampleResponse,
    responses={
        200: {
            "content": {
                "image/png": {"description": "one PNG (1 sample) or a grid, with `Accept: image/png`"},
                "application/x-npy": {"description": "uint8 (N, C, H, W), with `Accept: application/x-npy`"},
            }
        },
        **error_responses(400, 401, 404, 413, 422, 500, 503, 504),
    },
)
async def sample(body: SampleRequest, request: Request, state: ReadyState, _: Authorized):
    """Generate `num_samples` images. The same seed gives the same images, however requests are batched."""
    started = time.perf_counter()
    settings = state.settings
    entry = state.registry.get(body.model)
    check_sample_count(body.num_samples, "num_samples", settings)
    seed = body.seed if body.seed is not None else secrets.randbelow(MAX_SEED + 1)
    latents = entry.model.draw_latents(body.num_samples, body.temperature, seed)
    result = await until_disconnect(
        request, entry.sample.submit(LatentsInput(tuple(latents)), settings.request_timeout_s)
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
            seed=seed,
            temperature=body.temperature,
            num_samples=body.num_samples,
            image_shape=list(entry.model.image_shape),
            format=body.format,
            timings=timings(started, [result]),
            **images_payload(images, body.format),
        )
    )

"""POST /logprob: exact log-likelihoods of uploaded images (multipart files or JSON)."""

from __future__ import annotations

import time

import torch
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from ..errors import BadRequest, ServiceError
from ..imageio import images_to_tensor
from ..operations import LogProbInput
from ..schemas import (
    MAX_DEQUANTIZATION_SAMPLES,
    ImageScore,
    LogProbRequest,
    LogProbResponse,
    error_responses,
)
from ..state import Authorized, ReadyState
from .common import check_image_count, json_response, timings, until_disconnect

router = APIRouter(tags=["inference"])


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": LogProbRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "minItems": 1,
                        },
                        "model": {"type": "string", "maxLength": 128},
                        "dequantization_samples": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_DEQUANTIZATION_SAMPLES,
                            "default": 1,
                        },
                    },
                    "required": ["files"],
                }
            },
        },
    }
}


async def _read_json(request: Request, max_images: int) -> tuple[str | None, list, list[str], int]:
    try:
        body = LogProbRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    check_image_count(len(body.images), max_images)
    labels = [f"images[{i}]" for i in range(len(body.images))]
    return body.model, body.images, labels, body.dequantization_samples


def _form_samples(value: object) -> int:
    """The multipart field `dequantization_samples`, validated like the JSON one."""
    if value is None or value == "":
        return 1
    text = value if isinstance(value, str) else ""
    if not text.strip().isdigit() or not 1 <= int(text) <= MAX_DEQUANTIZATION_SAMPLES:
        raise RequestValidationError(
            [
                {
                    "loc": ("body", "dequantization_samples"),
                    "msg": f"must be an integer from 1 to {MAX_DEQUANTIZATION_SAMPLES}, "
                    f"got {str(value)[:20]!r}",
                    "type": "value_error",
                }
            ]
        )
    return int(text)


async def _read_multipart(request: Request, max_images: int) -> tuple[str | None, list, list[str], int]:
    try:
        form = await request.form(max_files=max_images + 1, max_fields=16)
    except Exception as exc:  # the multipart parser raises several types for malformed bodies
        raise BadRequest(f"malformed multipart body: {exc}") from None
    uploads = [(key, v) for key, v in form.multi_items() if isinstance(v, UploadFile)]
    if not uploads:
        raise BadRequest("multipart body has no files (send them as the field 'files')")
    check_image_count(len(uploads), max_images)
    model = form.get("model")
    items = [await up.read() for _, up in uploads]
    labels = [f"file {i} ({up.filename or key})" for i, (key, up) in enumerate(uploads)]
    samples = _form_samples(form.get("dequantization_samples"))
    return (model if isinstance(model, str) and model else None), items, labels, samples


@router.post(
    "/logprob",
    response_model=LogProbResponse,
    openapi_extra=_OPENAPI,
    responses=error_responses(400, 401, 404, 413, 415, 422, 500, 503, 504),
)
async def logprob(request: Request, state: ReadyState, _: Authorized) -> Response:
    """Score images: JSON `{"model"?, "images": [...], "dequantization_samples"?}` or multipart files under
    `files` (PNG/JPEG/.npy). `dequantization_samples` K > 1 gives the importance-weighted bound."""
    started = time.perf_counter()
    settings = state.settings
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        model_name, items, labels, samples = await _read_json(request, settings.max_images_per_request)
    elif content_type == "multipart/form-data":
        model_name, items, labels, samples = await _read_multipart(request, settings.max_images_per_request)
    else:
        raise UnsupportedMediaType(
            f"content type {content_type or '(none)'!r} is not supported: "
            "use application/json or multipart/form-data"
        )
    entry = state.registry.get(model_name)
    images = images_to_tensor(items, entry.model.image_shape, labels)
    counts = torch.full((len(items),), samples, dtype=torch.int64)
    result = await until_disconnect(
        request, entry.logprob.submit(LogProbInput(images, counts), settings.request_timeout_s)
    )
    scores = result.output
    state.metrics.images_scored.labels(model=entry.model.name).inc(len(items))
    request.state.log.update(model=entry.model.name, images=len(items), dequantization_samples=samples)
    return json_response(
        LogProbResponse(
            model=entry.model.name,
            num_dims=entry.model.num_dims,
            dequantization_samples=samples,
            results=[
                ImageScore(log_prob=lp, bits_per_dim=b)
                for lp, b in zip(scores.log_prob.tolist(), scores.bits_per_dim.tolist(), strict=True)
            ],
            timings=timings(started, [result]),
        )
    )

"""POST /logprob: exact log-likelihoods of uploaded images (multipart files or JSON)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated

import torch
from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from ..codec import images_to_tensor
from ..errors import BadRequest, UnsupportedMediaType
from ..limits import Limits
from ..operations import LogProbInput
from ..schemas import (
    MAX_DEQUANTIZATION_SAMPLES,
    ImageScore,
    LogProbRequest,
    LogProbResponse,
    error_responses,
)
from ..state import Authorized, ReadyState, RequestLimits
from .common import Call, json_response, timings, until_disconnect

router = APIRouter(tags=["inference"])

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


@dataclass(frozen=True)
class Upload:
    """The images of a /logprob request as they came (JSON or multipart), each with a label for errors."""

    model: str | None
    items: list
    labels: list[str]
    samples: int  # K of the importance-weighted bound


async def _read_json(request: Request, limits: Limits) -> Upload:
    try:
        body = LogProbRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    limits.check_images(len(body.images))
    labels = [f"images[{i}]" for i in range(len(body.images))]
    return Upload(body.model, body.images, labels, body.dequantization_samples)


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


async def _read_multipart(request: Request, limits: Limits) -> Upload:
    try:
        form = await request.form(max_files=limits.max_images + 1, max_fields=16)
    except Exception as exc:  # the multipart parser raises several types for malformed bodies
        raise BadRequest(f"malformed multipart body: {exc}") from None
    uploads = [(key, v) for key, v in form.multi_items() if isinstance(v, UploadFile)]
    if not uploads:
        raise BadRequest("multipart body has no files (send them as the field 'files')")
    limits.check_images(len(uploads))
    model = form.get("model")
    items = [await up.read() for _, up in uploads]
    labels = [f"file {i} ({up.filename or key})" for i, (key, up) in enumerate(uploads)]
    samples = _form_samples(form.get("dequantization_samples"))
    return Upload(model if isinstance(model, str) and model else None, items, labels, samples)


async def read_upload(request: Request, _: Authorized, limits: RequestLimits) -> Upload:
    """The request's images from a JSON body or multipart files (`files`), within the image limit."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        return await _read_json(request, limits)
    if content_type == "multipart/form-data":
        return await _read_multipart(request, limits)
    raise UnsupportedMediaType(
        f"content type {content_type or '(none)'!r} is not supported: "
        "use application/json or multipart/form-data"
    )


LogProbCall = Call[Upload, LogProbInput]


async def logprob_call(state: ReadyState, upload: Annotated[Upload, Depends(read_upload)]) -> LogProbCall:
    entry = state.registry.get(upload.model)
    images = images_to_tensor(upload.items, entry.model.image_shape, upload.labels)
    samples = torch.full((images.shape[0],), upload.samples, dtype=torch.int64)
    return Call(upload, entry, LogProbInput(images, samples))


@router.post(
    "/logprob",
    response_model=LogProbResponse,
    openapi_extra=_OPENAPI,
    responses=error_responses(400, 401, 404, 413, 415, 422, 500, 503, 504),
)
async def logprob(
    call: Annotated[LogProbCall, Depends(logprob_call)], request: Request, state: ReadyState
) -> Response:
    """Score images: JSON `{"model"?, "images": [...], "dequantization_samples"?}` or multipart files under
    `files` (PNG/JPEG/.npy). `dequantization_samples` K > 1 gives the importance-weighted bound."""
    started = time.perf_counter()
    entry, n, samples = call.entry, len(call.body.items), call.body.samples
    result = await until_disconnect(
        request, entry.logprob.submit(call.inputs, state.settings.request_timeout_s)
    )
    scores = result.output
    state.metrics.images_scored.labels(model=entry.model.name).inc(n)
    request.state.log.update(model=entry.model.name, images=n, dequantization_samples=samples)
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

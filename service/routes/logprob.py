"""POST /logprob: exact log-likelihoods of uploaded images (multipart files or JSON)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from ..errors import BadRequest, ServiceError, TooManyImages
from ..imageio import images_to_tensor
from ..schemas import ImageScore, LogProbRequest, LogProbResponse, Timings, error_responses
from ..state import Authorized, ReadyState
from .common import until_disconnect

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
                    },
                    "required": ["files"],
                }
            },
        },
    }
}


async def _read_json(request: Request, max_images: int) -> tuple[str | None, list, list[str]]:
    try:
        body = LogProbRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    if len(body.images) > max_images:
        raise TooManyImages(
            f"{len(body.images)} images exceed this server's limit of {max_images} per request"
        )
    return body.model, body.images, [f"images[{i}]" for i in range(len(body.images))]


async def _read_multipart(request: Request, max_images: int) -> tuple[str | None, list, list[str]]:
    try:
        form = await request.form(max_files=max_images + 1, max_fields=16)
    except Exception as exc:  # the multipart parser raises several types for malformed bodies
        raise BadRequest(f"malformed multipart body: {exc}") from None
    uploads = [(key, v) for key, v in form.multi_items() if isinstance(v, UploadFile)]
    if not uploads:
        raise BadRequest("multipart body has no files (send them as the field 'files')")
    if len(uploads) > max_images:
        raise TooManyImages(f"{len(uploads)} images exceed this server's limit of {max_images} per request")
    model = form.get("model")
    items = [await up.read() for _, up in uploads]
    labels = [f"file {i} ({up.filename or key})" for i, (key, up) in enumerate(uploads)]
    return (model if isinstance(model, str) and model else None), items, labels


@router.post(
    "/logprob",
    response_model=LogProbResponse,
    openapi_extra=_OPENAPI,
    responses=error_responses(400, 401, 404, 413, 415, 422, 500, 503, 504),
)
async def logprob(request: Request, state: ReadyState, _: Authorized) -> LogProbResponse:
    """Score images: JSON `{"model"?, "images": [...]}` or multipart files under `files` (PNG/JPEG/.npy)."""
    started = time.perf_counter()
    settings = state.settings
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        model_name, items, labels = await _read_json(request, settings.max_images_per_request)
    elif content_type == "multipart/form-data":
        model_name, items, labels = await _read_multipart(request, settings.max_images_per_request)
    else:
        raise UnsupportedMediaType(
            f"content type {content_type or '(none)'!r} is not supported: "
            "use application/json or multipart/form-data"
        )
    entry = state.registry.get(model_name)
    images = images_to_tensor(items, entry.model.image_shape, labels)
    result = await until_disconnect(request, entry.logprob.submit([images], settings.request_timeout_s))
    log_prob = result.output
    bpd = entry.model.bits_per_dim(log_prob)
    state.metrics.images_scored.labels(model=entry.model.name).inc(len(items))
    request.state.log.update(model=entry.model.name, images=len(items))
    return LogProbResponse(
        model=entry.model.name,
        num_dims=entry.model.num_dims,
        results=[
            ImageScore(log_prob=lp, bits_per_dim=b)
            for lp, b in zip(log_prob.tolist(), bpd.tolist(), strict=True)
        ],
        timings=Timings(
            queue_ms=round(result.queue_s * 1e3, 3),
            inference_ms=round(result.inference_s * 1e3, 3),
            total_ms=round((time.perf_counter() - started) * 1e3, 3),
        ),
    )

"""POST /logprob: exact log-likelihoods of uploaded images (multipart files or JSON)."""

from __future__ import annotations

import asyncio
import math
import re
import time
from dataclasses import dataclass
from typing import Annotated

import torch
from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import FormData, UploadFile

from model.ood import FPRS

from ..bodies import off_loop, read_json
from ..codec import images_to_tensor
from ..errors import BadRequest, UnsupportedMediaType
from ..limits import Limits
from ..ood import check_ood_options, complexity_bits, ood_results
from ..operations import LogProbInput
from ..schemas import (
    MAX_DEQUANTIZATION_SAMPLES,
    ImageScore,
    LogProbRequest,
    LogProbResponse,
    OodLogProbResponse,
    error_responses,
)
from ..state import ReadyState, RequestLimits
from .common import Call, json_response, timings, until_disconnect

router = APIRouter(tags=["inference"])
FPR_TEXTS = [f"{f:g}" for f in FPRS]  # the multipart field ood_fpr: exactly one of these

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
                        "ood": {"type": "string", "enum": ["true", "false"], "default": "false"},
                        "ood_fpr": {"type": "string", "enum": FPR_TEXTS},
                    },
                    "required": ["files"],
                }
            },
        },
    }
}


_SMALL_INT = re.compile(r"[0-9]{1,6}")


@dataclass(frozen=True)
class Upload:
    """The images of a /logprob request as they came (JSON or multipart), each with a label for errors."""

    model: str | None
    items: list
    labels: list[str]
    samples: int  # K of the importance-weighted bound
    ood: bool = False  # add the out-of-distribution scores
    ood_fpr: float | None = None  # their false-positive rate (None: the default)


async def _read_json(request: Request, limits: Limits) -> Upload:
    body = await read_json(request, LogProbRequest)
    limits.check_images(len(body.images))
    labels = [f"images[{i}]" for i in range(len(body.images))]
    return Upload(body.model, body.images, labels, body.dequantization_samples, body.ood, body.ood_fpr)


def _form_samples(value: object) -> int:
    """The multipart field `dequantization_samples`, validated like the JSON one."""
    if value is None or value == "":
        return 1
    text = value if isinstance(value, str) else ""
    # ASCII digits only, no padding or signs, as JSON integers are (str.isdigit takes '٣' and int() a
    # 5,000-digit string only to refuse it)
    if not _SMALL_INT.fullmatch(text) or not 1 <= int(text) <= MAX_DEQUANTIZATION_SAMPLES:
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


def _form_choice(form: FormData, field: str, choices: list[str]) -> str | None:
    """A multipart field that must be exactly one of `choices` when present."""
    value = form.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or value not in choices:
        raise RequestValidationError(
            [
                {
                    "loc": ("body", field),
                    "msg": f"must be one of {', '.join(choices)}, got {str(value)[:20]!r}",
                    "type": "value_error",
                }
            ]
        )
    return value


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
    ood = _form_choice(form, "ood", ["true", "false"]) == "true"
    fpr = _form_choice(form, "ood_fpr", FPR_TEXTS)
    name = model if isinstance(model, str) and model else None
    return Upload(name, items, labels, samples, ood, None if fpr is None else float(fpr))


async def read_upload(request: Request, limits: RequestLimits) -> Upload:
    """The request's images from a JSON body or multipart files (`files`), within the image limit."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        upload = await _read_json(request, limits)
    elif content_type == "multipart/form-data":
        upload = await _read_multipart(request, limits)
    else:
        raise UnsupportedMediaType(
            f"content type {content_type or '(none)'!r} is not supported: "
            "use application/json or multipart/form-data"
        )
    check_ood_options(upload.ood, upload.ood_fpr, upload.samples)
    return upload


LogProbCall = Call[Upload, LogProbInput]


def _finite(value: float) -> float | None:
    """A score as the schema documents it: the number, or null where it is not finite."""
    return value if math.isfinite(value) else None


async def logprob_call(state: ReadyState, upload: Annotated[Upload, Depends(read_upload)]) -> LogProbCall:
    entry = state.registry.get(upload.model)
    if upload.ood:
        entry.model.ood.require()  # before any work: a model without statistics is a 422
    images = await off_loop(images_to_tensor, upload.items, entry.model.image_shape, upload.labels)
    samples = torch.full((images.shape[0],), upload.samples, dtype=torch.int64)
    return Call(upload, entry, LogProbInput(images, samples))


@router.post(
    "/logprob",
    response_model=LogProbResponse | OodLogProbResponse,
    openapi_extra=_OPENAPI,
    responses=error_responses(400, 401, 404, 413, 415, 422, 500, 503, 504),
)
async def logprob(
    call: Annotated[LogProbCall, Depends(logprob_call)], request: Request, state: ReadyState
) -> Response:
    """Score images: JSON `{"model"?, "images": [...], "dequantization_samples"?, "ood"?, "ood_fpr"?}` or
    multipart files under `files` (PNG/JPEG/.npy) with the same fields. `dequantization_samples` K > 1
    gives the importance-weighted bound; `ood: true` adds out-of-distribution scores (docs/math.md §8)."""
    started = time.perf_counter()
    entry, n, samples, upload = call.entry, len(call.body.items), call.body.samples, call.body
    # L(x) is computed on a worker thread while the batch runs
    bits = asyncio.ensure_future(complexity_bits(call.inputs.images)) if upload.ood else None
    try:
        result = await until_disconnect(
            request, entry.logprob.submit(call.inputs, state.settings.request_timeout_s)
        )
    except BaseException:
        if bits is not None:
            bits.cancel()
        raise
    scores = result.output
    state.metrics.images_scored.labels(model=entry.model.name).inc(n)
    request.state.log.update(model=entry.model.name, images=n, dequantization_samples=samples)
    results = [
        ImageScore(log_prob=_finite(lp), bits_per_dim=_finite(b))
        for lp, b in zip(scores.log_prob.tolist(), scores.bits_per_dim.tolist(), strict=True)
    ]
    common = dict(
        model=entry.model.name,
        model_version=entry.version_label,
        num_dims=entry.model.num_dims,
        dequantization_samples=samples,
    )
    if bits is None:
        return json_response(LogProbResponse(**common, results=results, timings=timings(started, [result])))
    stats = entry.model.ood.require()
    per_image, info, typicality = ood_results(
        stats, results, scores.log_prob.numpy(), await bits, upload.ood_fpr
    )
    request.state.log.update(ood=True)
    return json_response(
        OodLogProbResponse(
            **common,
            results=per_image,
            ood=info,
            typicality=typicality,
            timings=timings(started, [result]),
        )
    )

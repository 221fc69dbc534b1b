"""The Open Inference Protocol (v2) REST API: server and model metadata, liveness and readiness, and
inference through the same batchers, limits, admission, key and metrics as the rest of the API.

What each protocol model takes and gives is in service/oip_models.py, the tensor codec in service/oip.py,
the protocol's error shape in service/oip_errors.py. The routes are left out of the OpenAPI document
(the protocol has its own, KServe's `open_inference_rest.yaml`); a body needs no content type.
"""

from __future__ import annotations

import asyncio
import re
import secrets

import numpy as np
import torch
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from model.ood import DEFAULT_FPR, OodStats, complexity_score

from ..bodies import off_loop
from ..errors import InvalidInferenceRequest, UnknownModel, UnsupportedMediaType
from ..oip import HEADER_LENGTH, InferRequest, TensorSpec, encode_response, parse_request
from ..oip_models import (
    OOD_OUTPUTS,
    SCORE_OUTPUTS,
    ProtocolModel,
    model_config,
    model_metadata,
    resolve,
    sample_parameters,
    score_parameters,
)
from ..ood import complexity_bits
from ..operations import LatentsInput, LogProbInput
from ..registry import ServedEntry
from ..schemas import MAX_SEED
from ..state import AppState, ReadyState, RequestLimits, State
from .common import until_disconnect

__all__ = ["EXTENSIONS", "SERVER_NAME", "router"]

router = APIRouter(prefix="/v2", tags=["open inference protocol"], include_in_schema=False)
SERVER_NAME = "flowserve"
# The protocol's optional extensions this server implements (names as Triton reports them).
EXTENSIONS = [
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "model_repository(unload_dependents)",
    "parameters",
]
_VERSION = re.compile(r"[1-9][0-9]{0,8}")


def _version(text: str | None, name: str) -> int | None:
    if text is None:
        return None
    if not _VERSION.fullmatch(text):
        raise UnknownModel(f"model {name!r} has no version {text[:20]!r} (versions are positive integers)")
    return int(text)


def _lookup(state: AppState, name: str, version: str | None) -> tuple[ProtocolModel, ServedEntry]:
    """The protocol model and the served version (held for this request) a path names."""
    registry = state.registry
    assert registry is not None
    protocol = resolve(name, registry)
    return protocol, registry.get(protocol.checkpoint, _version(version, name))


# -- server ---------------------------------------------------------------------------------------------
@router.get("")
async def server_metadata(request: Request) -> dict:
    return {"name": SERVER_NAME, "version": request.app.version, "extensions": EXTENSIONS}


@router.get("/health/live")
async def live(state: State) -> dict:
    return {"live": True, "ready": state.ready}


@router.get("/health/ready")
async def ready(state: State) -> JSONResponse:
    """200 when models are loaded and warmed up and the server is not draining; 503 otherwise."""
    if state.ready and state.registry is not None:
        return JSONResponse({"live": True, "ready": True})
    error = "not ready: loading, warming up or shutting down"
    return JSONResponse({"error": error, "live": True, "ready": False}, status_code=503)


# -- models ---------------------------------------------------------------------------------------------
@router.get("/models/{name}")
@router.get("/models/{name}/versions/{version}")
async def metadata(name: str, state: ReadyState, limits: RequestLimits, version: str | None = None) -> dict:
    protocol, entry = _lookup(state, name, version)
    return model_metadata(protocol, entry.model, limits)


@router.get("/models/{name}/config")
@router.get("/models/{name}/versions/{version}/config")
async def config(name: str, state: ReadyState, limits: RequestLimits, version: str | None = None) -> dict:
    """Triton's model configuration (the model configuration extension), read by perf_analyzer."""
    protocol, entry = _lookup(state, name, version)
    return model_config(protocol, entry.model, limits)


def _model_ready(state: AppState, name: str, version: str | None) -> JSONResponse:
    """200 while the model (and version) takes requests; 404 for a name the server has never had; 503 for
    one that is not loaded, with the reason."""
    if not state.ready or state.registry is None:
        error = "not ready: loading, warming up or shutting down"
        return JSONResponse({"error": error, "name": name, "ready": False}, status_code=503)
    protocol = resolve(name, state.registry)  # unknown names: 404
    try:
        _lookup(state, protocol.name, version)
    except UnknownModel as exc:
        if not state.registry.known(protocol.checkpoint):
            raise
        return JSONResponse({"error": exc.message, "name": name, "ready": False}, status_code=503)
    return JSONResponse({"name": name, "ready": True})


@router.get("/models/{name}/ready")
@router.get("/models/{name}/versions/{version}/ready")
async def model_ready(name: str, state: State, version: str | None = None) -> JSONResponse:
    return _model_ready(state, name, version)


# -- inference ------------------------------------------------------------------------------------------
Outputs = list[tuple[TensorSpec, np.ndarray]]


def _selected(parsed: InferRequest, default: tuple[str, ...]) -> list[str]:
    """The outputs to return: those the request names, in its order, or `default`."""
    return [o.name for o in parsed.outputs] if parsed.outputs else list(default)


def _ood_values(stats: OodStats, log_prob: np.ndarray, bits: np.ndarray, fpr: float | None) -> dict:
    """What `/logprob` with `ood: true` adds per image, as arrays."""
    score = complexity_score(log_prob, bits)
    return {
        "ood_score": np.asarray(score, dtype=np.float64),
        "log_prob_percentile": np.asarray(stats.percentile(log_prob), dtype=np.float64),
        "is_outlier": np.asarray(
            stats.is_outlier(score, DEFAULT_FPR if fpr is None else fpr), dtype=np.bool_
        ),
    }


async def _score(
    request: Request, state: AppState, entry: ServedEntry, parsed: InferRequest, specs: dict[str, TensorSpec]
) -> tuple[Outputs, dict]:
    """`images` through the `/logprob` batcher of the version → the scores (and the ood outputs)."""
    requested = [o.name for o in parsed.outputs] if parsed.outputs else None
    options = score_parameters(parsed.parameters, requested, state.settings.request_timeout_s)
    stats = entry.model.ood.require() if options.ood else None  # before any work
    images = torch.from_numpy(parsed.inputs["images"])
    n = images.shape[0]
    if n == 0:
        raise InvalidInferenceRequest("input 'images' holds no images")
    samples = torch.full((n,), options.samples, dtype=torch.int64)
    bits = asyncio.ensure_future(complexity_bits(images)) if stats is not None else None
    try:
        result = await until_disconnect(
            request, entry.logprob.submit(LogProbInput(images, samples), options.timeout_s)
        )
    except BaseException:
        if bits is not None:
            bits.cancel()
        raise
    state.metrics.images_scored.labels(model=entry.model.name).inc(n)
    request.state.log.update(model=entry.model.name, images=n, dequantization_samples=options.samples)
    log_prob = result.output.log_prob.numpy()
    values = {"log_prob": log_prob, "bits_per_dim": result.output.bits_per_dim.numpy()}
    if stats is not None and bits is not None:
        values.update(_ood_values(stats, log_prob, await bits, options.ood_fpr))
        request.state.log.update(ood=True)
    names = _selected(parsed, (*SCORE_OUTPUTS, *OOD_OUTPUTS) if stats is not None else SCORE_OUTPUTS)
    return [(specs[name], values[name]) for name in names], {}


async def _sample(
    request: Request, state: AppState, entry: ServedEntry, parsed: InferRequest, specs: dict[str, TensorSpec]
) -> tuple[Outputs, dict]:
    """`num_samples` images through the `/sample` batcher of the version, from `/sample`'s noise."""
    timeout_s = state.settings.request_timeout_s
    options = sample_parameters(parsed.parameters, parsed.inputs, timeout_s, state.limits)
    seed = options.seed if options.seed is not None else secrets.randbelow(MAX_SEED + 1)
    latents = entry.model.draw_latents(options.num_samples, options.temperature, seed)
    result = await until_disconnect(
        request, entry.sample.submit(LatentsInput(tuple(latents)), options.timeout_s)
    )
    state.metrics.images_generated.labels(model=entry.model.name).inc(options.num_samples)
    request.state.log.update(model=entry.model.name, images=options.num_samples, seed=seed)
    images = result.output.numpy()
    outputs = [(specs[name], images) for name in _selected(parsed, ("images",))]
    return outputs, {"seed": seed, "temperature": options.temperature}


async def _infer(request: Request, state: AppState, name: str, version: str | None) -> Response:
    protocol, entry = _lookup(state, name, version)  # the version is fixed here, before the body is read
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding[:20]!r} is not supported: send the body as is"
        )
    body = await request.body()
    inputs, outputs = protocol.inputs(entry.model, state.limits), protocol.outputs(entry.model)
    parsed = await off_loop(
        parse_request,
        body,
        request.headers.get(HEADER_LENGTH),
        inputs,
        set(outputs),
        protocol.required_inputs(),
    )
    run = _score if protocol.task == "score" else _sample
    tensors, parameters = await run(request, state, entry, parsed, outputs)
    payload, header_length = await off_loop(
        encode_response, protocol.name, entry.version_label, parsed, tensors, parameters
    )
    if header_length is None:
        return Response(payload, media_type="application/json")
    return Response(
        payload, media_type="application/octet-stream", headers={HEADER_LENGTH: str(header_length)}
    )


@router.post("/models/{name}/infer")
@router.post("/models/{name}/versions/{version}/infer")
async def infer(name: str, request: Request, state: ReadyState, version: str | None = None) -> Response:
    return await _infer(request, state, name, version)

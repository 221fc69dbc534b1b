"""Request and response schemas, in families; validation lives in the `Field` constraints.

Numbers are strict (no `true` for an integer, no `"2"` for a number): lax coercion surprises clients.
The configurable per-request limits are published in the OpenAPI document by `publish_limits`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    TypeAdapter,
    WithJsonSchema,
)

from model.ood import DEFAULT_FPR, FPRS

__all__ = [
    "MAX_SEED",
    "ErrorDetail",
    "ErrorResponse",
    "ImageScore",
    "LogProbRequest",
    "LogProbResponse",
    "ModelInfo",
    "ModelList",
    "ModelVersionInfo",
    "OodImageScore",
    "OodLogProbResponse",
    "OodReferenceInfo",
    "OodRequestInfo",
    "SampleRequest",
    "SampleResponse",
    "Timings",
    "Typicality",
    "error_responses",
    "publish_limits",
]

HARD_MAX_IMAGES = 65536  # the configurable per-request limits are checked against Settings
MAX_DEQUANTIZATION_SAMPLES = 64
MAX_IMAGE_CHARS = 2**22  # one base64 image; the body limit usually binds first
MAX_NAME_CHARS = 128
MAX_SEED = 2**53 - 1  # exact in every JSON parser (JavaScript's numbers are doubles)


def _not_bool_or_text(value: Any) -> Any:
    if isinstance(value, bool | str | bytes):
        raise ValueError("must be a JSON number, not a boolean or a string")
    return value


# A JSON integer: 3 or 3.0 (JSON Schema's `integer` includes both), never true, "3" or 3.5.
JsonInt = Annotated[int, BeforeValidator(_not_bool_or_text)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED), BeforeValidator(_not_bool_or_text)]  # bounds inside: Optional
Pixel = Annotated[int, Field(strict=True, ge=0, le=255)]
Base64Image = Annotated[str, StringConstraints(min_length=1, max_length=MAX_IMAGE_CHARS)]


def nested_numbers(depths: tuple[int, ...], leaf: Callable[[Any], bool], what: str) -> Callable[[Any], Any]:
    """A validator of nested JSON arrays `depths` deep whose every element passes `leaf`, failing at the
    first element that does not, with its index path. One pass, no per-element error objects: pydantic's
    own union of nested list types builds an error per element per member it tries (8 million errors,
    a minute, for a 16 MB flat list)."""

    def check(value: Any) -> Any:
        if not isinstance(value, list):
            raise ValueError(f"expected a nested array of {what}")
        depth, probe = 0, value
        while isinstance(probe, list) and probe:
            probe, depth = probe[0], depth + 1
        if depth not in depths:
            levels = " or ".join(map(str, depths))
            raise ValueError(f"expected {levels} levels of nested arrays of {what}, got {depth}")
        stack: list[tuple[list, tuple[int, ...]]] = [(value, ())]
        while stack:
            node, path = stack.pop()
            if len(path) == depth - 1:
                for i, x in enumerate(node):
                    if not leaf(x):
                        where = ".".join(map(str, (*path, i)))
                        raise ValueError(f"element {where} is {str(x)[:20]!r}, not {what}")
                continue
            for i in range(len(node) - 1, -1, -1):  # pushed in reverse: visited in order
                child = node[i]
                if not isinstance(child, list):
                    where = ".".join(map(str, (*path, i)))
                    raise ValueError(f"element {where} is {str(child)[:20]!r}, not an array")
                stack.append((child, (*path, i)))
        return value

    return check


def _pixel(x: Any) -> bool:
    return type(x) is int and 0 <= x <= 255


# (H, W), (C, H, W) or (H, W, C) integer pixels; documented as the nested types it is checked to be.
PixelArray = Annotated[
    list,
    BeforeValidator(nested_numbers((2, 3), _pixel, "integer pixels in [0, 255]")),
    WithJsonSchema(TypeAdapter(list[list[Pixel]] | list[list[list[Pixel]]]).json_schema()),
]
ModelName = Annotated[str, StringConstraints(max_length=MAX_NAME_CHARS)]
Temperature = Annotated[float, Field(strict=True, ge=0.0, le=2.0)]  # scale of the latent noise
FalsePositiveRate = Literal[FPRS]  # type: ignore[valid-type]  # the rates every ood_stats.json has thresholds at


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. invalid_request, unknown_model")
    message: str = Field(description="what was wrong, for a person")
    request_id: str | None = Field(description="echoes X-Request-ID (or the one the server made)")


class ErrorResponse(BaseModel):
    """The body of every non-2xx response."""

    error: ErrorDetail


_ERROR_DESCRIPTIONS = {
    400: "malformed JSON or multipart body",
    401: "missing or wrong X-API-Key (only when the server has a key)",
    404: "unknown model",
    413: "request body larger than the server's limit",
    415: "unsupported content type",
    422: "the request does not validate, or an image cannot be decoded or has the wrong shape",
    500: "internal error (details only in the server log)",
    503: "starting, shutting down, or the queue is full (Retry-After)",
    504: "the request's deadline passed while it was queued",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries with the error schema, for a route's `responses=`."""
    return {s: {"model": ErrorResponse, "description": _ERROR_DESCRIPTIONS[s]} for s in statuses}


class Timings(BaseModel):
    queue_ms: float = Field(description="time waiting for a batch (max over the request's chunks)")
    inference_ms: float = Field(description="time of the batch that computed this request")
    total_ms: float = Field(description="server time for the whole request")


class SampleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: ModelName | None = Field(
        None, description="model name (GET /models); default (or empty): the server's default"
    )
    num_samples: JsonInt = Field(16, ge=1, le=HARD_MAX_IMAGES, description="images to generate")
    temperature: Temperature = Field(1.0, description="scale of the latent noise")
    seed: Seed | None = Field(
        None,
        description="seed of this request's noise; drawn and returned when absent",
    )
    format: Literal["png", "npy", "grid_png"] = Field(
        "png", description="png: one base64 PNG per image; grid_png: one base64 PNG grid; npy: base64 .npy"
    )


class SampleResponse(BaseModel):
    model: str
    model_version: str = Field(description="the version of the model that answered (also X-Model-Version)")
    seed: int
    temperature: float
    num_samples: int
    image_shape: list[int]
    format: Literal["png", "npy", "grid_png"]
    images: list[str] | None = Field(None, description="base64 PNGs (format png)")
    grid: str | None = Field(None, description="base64 PNG grid (format grid_png)")
    npy: str | None = Field(None, description="base64 .npy of uint8 (N, C, H, W) (format npy)")
    timings: Timings


class LogProbRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: ModelName | None = Field(None, description="model name; default (or empty): the server's default")
    images: list[Base64Image | PixelArray] = Field(
        min_length=1,
        max_length=HARD_MAX_IMAGES,
        description="base64 PNG/JPEG/.npy strings, or nested arrays of integer pixels in [0, 255]",
    )
    dequantization_samples: JsonInt = Field(
        1,
        ge=1,
        le=MAX_DEQUANTIZATION_SAMPLES,
        description="K: score log mean_k p(x + u_k) over K hashed noise draws per image (importance-weighted "
        "bound, tighter as K grows; K = 1 is the single-sample bound); costs K passes",
    )
    ood: StrictBool = Field(
        False,
        description="also score how out-of-distribution each image is (ood_score, log_prob_percentile, "
        "is_outlier, ood_method) and, for several images, the batch (typicality); needs the model's "
        "reference statistics (flowserve ood CHECKPOINT) and dequantization_samples 1 (docs/math.md §8)",
    )
    ood_fpr: FalsePositiveRate | None = Field(
        None,
        description=f"false-positive rate of is_outlier and of the typicality verdict, one of the stored "
        f"rates; default {DEFAULT_FPR} (only with ood: true)",
    )


class ImageScore(BaseModel):
    """An image's score. Computed in float32, and again in float64 for an image whose float32 number is
    not finite (an image far outside the training data: docs/math.md §9); null only where the model's
    density is not finite even in float64."""

    log_prob: float | None = Field(description="log-probability of the discrete image, nats")
    bits_per_dim: float | None = Field(description="-log_prob / (num_dims ln 2)")


class LogProbResponse(BaseModel):
    model: str
    model_version: str = Field(description="the version of the model that answered (also X-Model-Version)")
    num_dims: int
    dequantization_samples: int = Field(1, description="K of the importance-weighted bound")
    results: list[ImageScore]
    timings: Timings


class OodImageScore(ImageScore):
    ood_score: float | None = Field(
        description="complexity-corrected score S(x) = −log₂ p(x) − L(x), bits, L the image's length "
        "under a lossless compressor; higher is more anomalous; null where log_prob is −inf (the density "
        "underflowed; is_outlier is true)"
    )
    log_prob_percentile: float = Field(
        ge=0, le=100, description="percentage of the model's held-out test images with a lower log_prob"
    )
    is_outlier: bool = Field(description="ood_score above the model's threshold at the request's ood_fpr")
    ood_method: str = Field(description="what ood_score is: input_complexity:<compressor>")


class OodRequestInfo(BaseModel):
    method: str = Field(description="what ood_score is: input_complexity:<compressor>")
    fpr: float = Field(description="false-positive rate of is_outlier and the typicality verdict")
    threshold: float = Field(description="ood_score above this (bits) is an outlier at fpr")
    dataset: str = Field(description="the in-distribution images the thresholds were fit on")
    test_images: int = Field(description="how many of them")


class Typicality(BaseModel):
    batch_size: int = Field(description="images in the request")
    reference_batch_size: int = Field(
        description="the stored batch size whose threshold is used: the largest not above batch_size "
        "(a threshold for fewer images is wider, so the false-positive rate stays at most fpr)"
    )
    mean_neg_log_prob: float | None = Field(description="the batch's mean −log p, nats (null: infinite)")
    entropy: float = Field(description="the model's entropy estimate: mean −log p of its test images, nats")
    statistic: float | None = Field(description="|mean_neg_log_prob − entropy|, nats (null: infinite)")
    threshold: float = Field(description="bootstrap threshold at fpr for reference_batch_size, nats")
    is_outlier: bool = Field(
        description="statistic above threshold: the batch is not typical of the model's data (too unlikely "
        "or too likely)"
    )


class OodLogProbResponse(LogProbResponse):
    """`/logprob` with `ood: true`."""

    results: list[OodImageScore]
    ood: OodRequestInfo
    typicality: Typicality | None = Field(
        description="the two-sided typicality test of the request's images as one batch; null for one image "
        "(use is_outlier)"
    )


class OodReferenceInfo(BaseModel):
    available: bool = Field(description="whether /logprob accepts ood: true for this model")
    message: str | None = Field(description="why not, and the command that makes the statistics")
    method: str | None = Field(description="what ood_score is")
    dataset: str | None = Field(description="the held-out images the statistics were computed on")
    test_images: int | None
    entropy: float | None = Field(description="mean −log p of those images, nats")
    fprs: list[float] = Field(description="the false-positive rates ood_fpr may choose")
    default_fpr: float
    thresholds: dict[str, float] = Field(description="ood_score threshold (bits) per false-positive rate")
    typicality_batch_sizes: list[int] = Field(description="batch sizes with fitted typicality thresholds")


class ModelVersionInfo(BaseModel):
    version: str
    state: Literal["READY", "LOADING", "UNLOADING", "UNAVAILABLE"] = Field(
        description="READY: takes new requests; UNLOADING: finishing the requests it took; UNAVAILABLE: on "
        "disk, not loaded (see reason)"
    )
    reason: str = Field(description="why a version is not READY (empty when it is)")
    weights_sha256: str | None = Field(description="SHA-256 of its model.safetensors")


class ModelInfo(BaseModel):
    name: str
    model_version: str = Field(description="the version that takes new requests (also X-Model-Version)")
    weights_sha256: str = Field(description="SHA-256 of that version's model.safetensors")
    versions: list[ModelVersionInfo] = Field(
        default_factory=list,
        description="every version of the model: in memory, or on disk as of the last scan of the models "
        "folder",
    )
    architecture: str
    config: dict
    image_shape: list[int]
    num_parameters: int
    test_bits_per_dim: float | None
    dataset: str | None
    device: str
    backend: dict[str, str] = Field(description="per operation: torch:<device> or onnxruntime:<provider>")
    ood: OodReferenceInfo = Field(description="the out-of-distribution reference statistics")
    default: bool = False


class ModelList(BaseModel):
    default: str
    models: list[ModelInfo]
    unavailable: dict[str, str] = Field(
        default_factory=dict,
        description="checkpoints set aside at start-up (--on-bad-model skip), each with the reason",
    )


def publish_limits(
    spec: dict[str, Any], *, max_samples: int, max_images: int, models: list[str]
) -> dict[str, Any]:
    """Write this server's per-request limits and model names into its OpenAPI document (in place), so
    that the schema states what the server accepts; validation keeps the hard limits, routes the rest."""
    named = {"type": "string", "enum": [*models, ""]}  # "": the default model
    schemas = spec["components"]["schemas"]
    for name in ("SampleRequest", "EncodeRequest", "DecodeRequest", "InterpolateRequest"):
        if name in schemas:
            schemas[name]["properties"]["model"]["anyOf"] = [named, {"type": "null"}]
    schemas["SampleRequest"]["properties"]["num_samples"]["maximum"] = max_samples
    if "EncodeRequest" in schemas:  # the latent-space routes (service/routes/latent.py)
        schemas["EncodeRequest"]["properties"]["images"]["maxItems"] = max_images
        schemas["InterpolateRequest"]["properties"]["steps"]["maximum"] = max_samples
    content = spec["paths"]["/logprob"]["post"]["requestBody"]["content"]
    as_json = content["application/json"]["schema"]["properties"]
    as_json["images"]["maxItems"] = max_images
    as_json["model"]["anyOf"] = [named, {"type": "null"}]
    as_form = content["multipart/form-data"]["schema"]["properties"]
    as_form["files"]["maxItems"] = max_images
    as_form["model"] = named
    for parameter in spec["paths"]["/models/{name}"]["get"]["parameters"]:
        if parameter["name"] == "name":
            parameter["schema"] = {"type": "string", "enum": models}
    return spec

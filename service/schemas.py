"""Request and response schemas, in families; validation lives in the `Field` constraints."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ImageScore",
    "LogProbRequest",
    "LogProbResponse",
    "ModelInfo",
    "ModelList",
    "SampleRequest",
    "SampleResponse",
    "Timings",
]

HARD_MAX_IMAGES = 65536  # the configurable per-request limits are checked against Settings
MAX_DEQUANTIZATION_SAMPLES = 64


class Timings(BaseModel):
    queue_ms: float = Field(description="time waiting for a batch (max over the request's chunks)")
    inference_ms: float = Field(description="time of the batch that computed this request")
    total_ms: float = Field(description="server time for the whole request")


class SampleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="model name (GET /models); default: the server's default")
    num_samples: int = Field(16, ge=1, le=HARD_MAX_IMAGES, description="images to generate")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="scale of the latent noise")
    seed: int | None = Field(
        None, ge=0, lt=2**63, description="seed of this request's noise; drawn and returned when absent"
    )
    format: Literal["png", "npy", "grid_png"] = Field(
        "png", description="png: one base64 PNG per image; grid_png: one base64 PNG grid; npy: base64 .npy"
    )


class SampleResponse(BaseModel):
    model: str
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

    model: str | None = None
    images: list[str | list] = Field(
        min_length=1,
        max_length=HARD_MAX_IMAGES,
        description="base64 PNG/JPEG/.npy strings, or nested arrays of integer pixels in [0, 255]",
    )
    dequantization_samples: int = Field(
        1,
        ge=1,
        le=MAX_DEQUANTIZATION_SAMPLES,
        description="K: score log mean_k p(x + u_k) over K hashed noise draws per image (importance-weighted "
        "bound, tighter as K grows; K = 1 is the single-sample bound); costs K passes",
    )


class ImageScore(BaseModel):
    log_prob: float = Field(description="log-probability of the discrete image, nats")
    bits_per_dim: float


class LogProbResponse(BaseModel):
    model: str
    num_dims: int
    dequantization_samples: int = Field(1, description="K of the importance-weighted bound")
    results: list[ImageScore]
    timings: Timings


class ModelInfo(BaseModel):
    name: str
    architecture: str
    config: dict
    image_shape: list[int]
    num_parameters: int
    test_bits_per_dim: float | None
    dataset: str | None
    device: str
    backend: dict[str, str] = Field(description="per operation: torch:<device> or onnxruntime:<provider>")
    default: bool = False


class ModelList(BaseModel):
    default: str
    models: list[ModelInfo]

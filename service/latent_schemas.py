"""Schemas of the latent-space endpoints (/encode, /decode, /interpolate), in families like `schemas.py`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .schemas import HARD_MAX_IMAGES, Timings

__all__ = [
    "DecodeRequest",
    "DecodeResponse",
    "EncodeRequest",
    "EncodeResponse",
    "InterpolateRequest",
    "InterpolateResponse",
    "InterpolationEndpoint",
]

MAX_LEVELS = 16
ImageFormat = Literal["png", "npy", "grid_png"]
Dequantization = Literal["midpoint", "hashed"]
DEQUANTIZATION_DESCRIPTION = (
    "where in each pixel's bin [x, x + 1) the image is encoded: midpoint (x + 0.5; /decode gives the "
    "image back robustly) or hashed (x + u with the image's seeded noise u: log_prob equals POST /logprob "
    "with K = 1, but a pixel whose u is close to 1 may decode to the bin above)"
)
LATENTS_DESCRIPTION = (
    "one array per level, finest first (GET /models/{name} gives the model; /encode returns them): "
    "base64 float32 .npy or nested arrays of shape (N, C, H, W)"
)


class EncodeRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"model": "finc-mnist", "images": ["<base64 PNG>"], "format": "npy"}]
        },
    )

    model: str | None = Field(None, description="model name (GET /models); default: the server's default")
    images: list[str | list] = Field(
        min_length=1,
        max_length=HARD_MAX_IMAGES,
        description="base64 PNG/JPEG/.npy strings, or nested arrays of integer pixels in [0, 255]",
    )
    format: Literal["npy", "array"] = Field("npy", description="latents as base64 .npy or nested arrays")
    dequantization: Dequantization = Field("midpoint", description=DEQUANTIZATION_DESCRIPTION)


class EncodeResponse(BaseModel):
    model: str
    num_images: int
    format: Literal["npy", "array"]
    latent_shapes: list[list[int]] = Field(description="(C, H, W) of each level, finest first")
    latents: list[str | list] = Field(description="per level: float32 (N, C, H, W), base64 .npy or arrays")
    dequantization: Dequantization
    log_det: list[float] = Field(description="per image: log|det ∂z/∂x| at the encoded point")
    log_prob: list[float] = Field(
        description="per image: log N(z) + log_det, nats: the log-density at the encoded point (with "
        "hashed: POST /logprob's value with K = 1; midpoint is not a bound on log P(x))"
    )
    timings: Timings


class DecodeRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"model": "finc-mnist", "latents": ["<base64 .npy, level 0>", "<level 1>"], "format": "png"}
            ]
        },
    )

    model: str | None = Field(None, description="model name (GET /models); default: the server's default")
    latents: list[str | list] = Field(min_length=1, max_length=MAX_LEVELS, description=LATENTS_DESCRIPTION)
    format: ImageFormat = Field(
        "png", description="png: one base64 PNG per image; grid_png: one base64 PNG grid; npy: base64 .npy"
    )


class DecodeResponse(BaseModel):
    model: str
    num_images: int
    image_shape: list[int]
    format: ImageFormat
    images: list[str] | None = Field(None, description="base64 PNGs (format png)")
    grid: str | None = Field(None, description="base64 PNG grid (format grid_png)")
    npy: str | None = Field(None, description="base64 .npy of uint8 (N, C, H, W) (format npy)")
    timings: Timings


class InterpolationEndpoint(BaseModel):
    """One end of the path: an image (encoded by the model) or a seed (latents drawn like /sample's)."""

    model_config = ConfigDict(extra="forbid")

    image: str | list | None = Field(
        None, description="base64 PNG/JPEG/.npy or a nested array of integer pixels in [0, 255]"
    )
    seed: int | None = Field(None, ge=0, lt=2**63, description="the latents of /sample with this seed, n=1")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="scale of a seed's latents")
    dequantization: Dequantization = Field("midpoint", description="for an image: as in /encode")

    @model_validator(mode="after")
    def _one_source(self) -> InterpolationEndpoint:
        if (self.image is None) == (self.seed is None):
            raise ValueError("give exactly one of 'image' or 'seed'")
        return self


class InterpolateRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model": "finc-mnist",
                    "start": {"seed": 1, "temperature": 0.7},
                    "end": {"seed": 2, "temperature": 0.7},
                    "steps": 8,
                    "method": "spherical",
                },
                {"start": {"image": "<base64 PNG>"}, "end": {"seed": 5, "temperature": 0.7}, "steps": 10},
            ]
        },
    )

    model: str | None = Field(None, description="model name (GET /models); default: the server's default")
    start: InterpolationEndpoint
    end: InterpolationEndpoint
    steps: int = Field(8, ge=2, le=HARD_MAX_IMAGES, description="images on the path, both ends included")
    method: Literal["linear", "spherical"] = Field(
        "spherical", description="straight line or great circle (slerp) between the two latent vectors"
    )
    format: ImageFormat = Field("png", description="as in /decode")


class InterpolateResponse(DecodeResponse):
    steps: int
    method: Literal["linear", "spherical"]
    t: list[float] = Field(description="position of each image on the path, 0 (start) to 1 (end)")

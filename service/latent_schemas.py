"""Schemas of the latent-space endpoints (/encode, /decode, /interpolate), in families like `schemas.py`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    WithJsonSchema,
    model_validator,
)

from .schemas import (
    HARD_MAX_IMAGES,
    Base64Image,
    JsonInt,
    ModelName,
    PixelArray,
    Seed,
    Temperature,
    Timings,
    nested_numbers,
)

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
MAX_LATENT_CHARS = 2**24  # one level's base64 .npy; the body limit usually binds first
# A latent value: a JSON number, never a boolean or a string (strict; ints are numbers too).
LatentValue = Annotated[float, Field(strict=True)]


def _number(x: object) -> bool:
    return type(x) is float or type(x) is int


# One level: base64 float32 .npy, or nested numbers (N, C, H, W) or (C, H, W); the model decides the sizes.
LatentLevel = (
    Annotated[str, StringConstraints(min_length=1, max_length=MAX_LATENT_CHARS)]
    | Annotated[
        list,
        BeforeValidator(nested_numbers((3, 4), _number, "numbers")),
        WithJsonSchema(
            TypeAdapter(list[list[list[list[LatentValue]]]] | list[list[list[LatentValue]]]).json_schema()
        ),
    ]
)

# Examples that work on the shipped MNIST models (Swagger's "Try it out", and the fuzz test's valid cases):
# a blank 28×28 PNG, and all-zero latents (levels (2, 14, 14) and (8, 7, 7): the temperature-0 sample).
BLANK_MNIST_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAABwAAAAcCAAAAABXZoBIAAAAEElEQVR4nGNgGAWjYBQQAwADLAABPwpG8wAAAABJRU5ErkJggg=="
)
ZERO_MNIST_LATENTS = [[[[0] * 14] * 14] * 2, [[[0] * 7] * 7] * 8]
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
            "examples": [{"model": "finc-mnist", "images": [BLANK_MNIST_PNG], "format": "npy"}]
        },
    )

    model: ModelName | None = Field(
        None, description="model name (GET /models); default (or empty): the server's default"
    )
    images: list[Base64Image | PixelArray] = Field(
        min_length=1,
        max_length=HARD_MAX_IMAGES,
        description="base64 PNG/JPEG/.npy strings, or nested arrays of integer pixels in [0, 255]",
    )
    format: Literal["npy", "array"] = Field("npy", description="latents as base64 .npy or nested arrays")
    dequantization: Dequantization = Field("midpoint", description=DEQUANTIZATION_DESCRIPTION)


class EncodeResponse(BaseModel):
    model: str
    model_version: str = Field(description="the version of the model that answered (also X-Model-Version)")
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
            "examples": [{"model": "finc-mnist", "latents": ZERO_MNIST_LATENTS, "format": "png"}]
        },
    )

    model: ModelName | None = Field(
        None, description="model name (GET /models); default (or empty): the server's default"
    )
    latents: list[LatentLevel] = Field(min_length=1, max_length=MAX_LEVELS, description=LATENTS_DESCRIPTION)
    format: ImageFormat = Field(
        "png", description="png: one base64 PNG per image; grid_png: one base64 PNG grid; npy: base64 .npy"
    )


class DecodeResponse(BaseModel):
    model: str
    model_version: str = Field(description="the version of the model that answered (also X-Model-Version)")
    num_images: int
    image_shape: list[int]
    format: ImageFormat
    images: list[str] | None = Field(None, description="base64 PNGs (format png)")
    grid: str | None = Field(None, description="base64 PNG grid (format grid_png)")
    npy: str | None = Field(None, description="base64 .npy of uint8 (N, C, H, W) (format npy)")
    timings: Timings


class InterpolationEndpoint(BaseModel):
    """One end of the path: an image (encoded by the model) or a seed (latents drawn like /sample's)."""

    # "exactly one of image or seed" in the schema too: one of the two is present and not null
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "oneOf": [
                {"required": [key], "properties": {key: {"not": {"type": "null"}}}}
                for key in ("image", "seed")
            ]
        },
    )

    image: Base64Image | PixelArray | None = Field(
        None, description="base64 PNG/JPEG/.npy or a nested array of integer pixels in [0, 255]"
    )
    seed: Seed | None = Field(None, description="the latents of /sample with this seed, n=1")
    temperature: Temperature = Field(1.0, description="scale of a seed's latents")
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
                {"start": {"image": BLANK_MNIST_PNG}, "end": {"seed": 5, "temperature": 0.7}, "steps": 10},
            ]
        },
    )

    model: ModelName | None = Field(
        None, description="model name (GET /models); default (or empty): the server's default"
    )
    start: InterpolationEndpoint
    end: InterpolationEndpoint
    steps: JsonInt = Field(8, ge=2, le=HARD_MAX_IMAGES, description="images on the path, both ends included")
    method: Literal["linear", "spherical"] = Field(
        "spherical", description="straight line or great circle (slerp) between the two latent vectors"
    )
    format: ImageFormat = Field("png", description="as in /decode")


class InterpolateResponse(DecodeResponse):
    steps: int
    method: Literal["linear", "spherical"]
    t: list[float] = Field(description="position of each image on the path, 0 (start) to 1 (end)")
    endpoints_reconstructed: list[bool | None] = Field(
        description="[start, end]: whether the first (last) frame is the end's image exactly (null for a "
        "seed end); false only for images far outside the model's data, where its inverse is "
        "ill-conditioned (docs/math.md §9)",
    )

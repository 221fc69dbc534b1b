"""Service settings: one pydantic-settings class; every field is an environment variable `FLOWS_<NAME>` and
an option of `python -m service` (service/__main__.py builds the command line from this class)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["DEFAULT_MODELS_DIR", "Settings", "default_onnx_cache"]

DEFAULT_MODELS_DIR = Path(__file__).resolve().parents[1] / "checkpoints"


def default_onnx_cache() -> Path:
    """`$XDG_CACHE_HOME/flowserve/onnx`, else `~/.cache/flowserve/onnx`."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "flowserve" / "onnx"


class Settings(BaseSettings):
    """Built inside `create_app()` / the CLI, never at import time; validators fail fast."""

    model_config = SettingsConfigDict(env_prefix="FLOWS_", extra="ignore")

    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0: every interface)")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on")
    models: Path = Field(
        DEFAULT_MODELS_DIR,
        description="directory of model folders: each a checkpoint (version 1) and/or numbered version "
        "folders NAME/1/, NAME/2/, ... (the highest serves)",
    )
    poll_models_s: float = Field(
        0.0,
        ge=0,
        le=86400,
        description="every this many seconds, scan the models folder and load each new model or new "
        "latest version, swapped in without a restart (0: no polling; POST /v2/repository/models/NAME/load "
        "loads on request)",
    )
    default_model: str | None = Field(None, description="model used when a request names none")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where models run (auto: CUDA when present; cuda without a GPU is an error)"
    )
    backend: Literal["auto", "torch", "onnx"] = Field(
        "auto", description="inference backend for exportable passes (auto: the faster one on this device)"
    )
    onnx_export: bool = Field(
        True,
        description="with backend onnx or auto, a model folder that ships no ONNX graphs gets them exported "
        "at start-up into onnx_cache, once per weights (a 1.7M-parameter model: about half a minute)",
    )
    onnx_cache: Path = Field(
        default_factory=default_onnx_cache,
        description="where start-up exports of ONNX graphs are kept, one folder per model and weights digest",
    )
    max_batch_images: int = Field(
        64, ge=1, le=4096, description="a batch closes at this many image passes (an image at K samples is K)"
    )
    max_wait_ms: float = Field(
        0.0,
        ge=0,
        le=1000,
        description="0: continuous batching (an idle model starts at once); >0: an idle model waits up to "
        "this long for a fuller batch",
    )
    inline_max_ms: float = Field(
        50.0,
        ge=0,
        le=1000,
        description="a batch predicted to take at most this long runs on the event loop when the server "
        "has no other request in flight (saves two thread hand-offs); 0: always on the inference thread",
    )
    max_queue_images: int = Field(
        1024,
        ge=1,
        description="queued work per (model, operation) before 503, in image passes (an image scored at "
        "K dequantisation samples counts K)",
    )
    overload_status: Literal[429, 503] = Field(503, description="status of a request refused by a full queue")
    retry_after_s: int = Field(1, ge=0, description="Retry-After (seconds) of an overloaded answer")
    request_timeout_s: float = Field(30.0, gt=0, description="deadline of a request, queueing included")
    max_samples_per_request: int = Field(
        256, ge=1, description="images one request may generate (/sample, /decode, /interpolate)"
    )
    max_images_per_request: int = Field(
        256, ge=1, description="images one request may upload (/logprob, /encode)"
    )
    max_body_bytes: int = Field(16 * 2**20, ge=1024, description="larger request bodies get a 413")
    max_json_bytes: int = Field(
        3 * 2**20,
        ge=1024,
        description="larger JSON bodies get a 413: parsing one holds the interpreter for ~20 ms per MB, "
        "so this bounds how long one request can delay the others (256 images' latents as nested "
        "arrays fit; as base64 .npy they take a third)",
    )
    api_key: str | None = Field(
        None,
        description="if set, every path but liveness, readiness and the playground's static files needs it, "
        "as X-API-Key or Authorization: Bearer (an empty key is refused: leave it unset for none)",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="a connection that has not sent a whole request head by then is closed",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        le=600,
        description="a request whose body has not fully arrived by then gets a 408, closed",
    )
    keep_alive_s: float = Field(5.0, gt=0, le=300, description="idle keep-alive connections close after this")
    max_connections: int = Field(
        256, ge=1, description="connections (and requests in flight) at once; more are answered 503 at once"
    )
    warmup: bool = Field(True, description="run every pass at start-up, before the server reports ready")
    on_bad_model: Literal["fail", "skip"] = Field(
        "fail",
        description="a checkpoint that does not load or warm up (unreadable, wrong shapes, non-finite "
        "weights or outputs): fail stops start-up naming the file and the reason; skip serves the others "
        "and reports it in /models and the log",
    )
    torch_threads: int = Field(
        0,
        ge=0,
        description="intra-op threads of each inference instance, torch, onnxruntime and the native solve "
        "(0: on a CPU, the usable cores less one, kept for the event loop, shared among the instances; "
        "torch's default where OMP_NUM_THREADS is set, and on a GPU)",
    )
    instances: int = Field(
        1,
        ge=1,
        le=64,
        description="model instances per process (inference threads): each batcher runs up to this many "
        "batches at once, each instance on its share of the cores",
    )
    precision: Literal["float32", "bf16"] = Field(
        "float32",
        description="sampling's coupling networks (/sample, /decode, /interpolate): bf16 runs them in "
        "bfloat16 where the CPU or GPU computes it natively, about 2-3x faster, and changes samples "
        "slightly (the same seed still gives the same images); scoring is always float32",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="server log level")

    @field_validator("models")
    @classmethod
    def _models_dir_exists(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"models directory {str(value)!r} does not exist")
        return value

    @field_validator("api_key")
    @classmethod
    def _key_not_empty(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("api_key is empty: set a key, or leave it unset to serve without one")
        return value

    @model_validator(mode="after")
    def _queue_holds_a_batch(self) -> Settings:
        if self.max_queue_images < self.max_batch_images:
            raise ValueError("max_queue_images must be at least max_batch_images")
        return self

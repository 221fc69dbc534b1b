"""The served checkpoints as Open Inference Protocol models: each checkpoint `NAME` is two of them.

- `NAME` scores images: input `images` `UINT8 [N, C, H, W]` → outputs `log_prob` (nats) and `bits_per_dim`,
  `FP64 [N]`, what `POST /logprob` returns; request parameter `dequantization_samples` (K, 1..64).
  With parameter `ood: true` (and optionally `ood_fpr`), or when the request names one of them as an
  output, also `ood_score` (bits; NaN where log_prob is -inf), `log_prob_percentile` (`FP64 [N]`) and
  `is_outlier` (`BOOL [N]`), as `/logprob` with `ood: true`.
- `NAME.sample` samples: input `num_samples` `INT64 [1]` (or the parameter `num_samples`), parameters
  `seed` (drawn and returned when absent) and `temperature` (0..2, default 1) → output `images`
  `UINT8 [N, C, H, W]`, the images `POST /sample` gives for that seed.

Both are the same weights and versions (they load and unload together) and go through the same batchers
as `/logprob` and `/sample`. This module says what each takes and gives, and checks a request's
parameters; the route (service/routes/v2.py) runs them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from fastapi.exceptions import RequestValidationError

from model.ood import DEFAULT_FPR, FPRS

from .errors import InvalidInferenceRequest, UnknownModel
from .limits import Limits
from .model_api import ServedModel
from .oip import TensorSpec
from .ood import check_ood_options
from .registry import ModelRegistry
from .schemas import MAX_DEQUANTIZATION_SAMPLES, MAX_SEED

__all__ = [
    "OOD_OUTPUTS",
    "PLATFORM",
    "SAMPLE_SUFFIX",
    "ProtocolModel",
    "SampleParameters",
    "ScoreParameters",
    "model_config",
    "model_metadata",
    "protocol_names",
    "resolve",
    "sample_parameters",
    "score_parameters",
]

SAMPLE_SUFFIX = ".sample"
PLATFORM = "pytorch"  # every pass is a PyTorch model; some run exported to ONNX (see parameters.backend)
Task = Literal["score", "sample"]
INTEGER_TYPES = ("INT32", "INT16", "INT8", "UINT64", "UINT32", "UINT16", "UINT8")
# Parameters the protocol's clients send on any request: `timeout` (microseconds) tightens the deadline,
# `priority` is accepted and has no effect (one queue per model and operation).
COMMON_PARAMETERS = ("timeout", "priority")
SCORE_OUTPUTS = ("log_prob", "bits_per_dim")
OOD_OUTPUTS = ("ood_score", "log_prob_percentile", "is_outlier")
_PARAMETER_DOCS: dict[Task, dict[str, str]] = {
    "score": {
        "dequantization_samples": f"K of the importance-weighted bound, 1..{MAX_DEQUANTIZATION_SAMPLES} "
        "(default 1), as /logprob's",
        "ood": "true: also the out-of-distribution outputs (ood_score, log_prob_percentile, is_outlier), as "
        "/logprob with ood: true (needs K = 1); naming one of them in outputs does the same",
        "ood_fpr": f"false-positive rate of is_outlier: one of {', '.join(f'{f:g}' for f in FPRS)} "
        f"(default {DEFAULT_FPR:g})",
        "timeout": "microseconds: a deadline tighter than the server's",
    },
    "sample": {
        "num_samples": "images to generate, instead of the num_samples input",
        "seed": f"seed of the noise, 0..{MAX_SEED}; drawn and returned in the response parameters when "
        "absent. The same seed gives /sample's images",
        "temperature": "scale of the latent noise, 0..2 (default 1)",
        "timeout": "microseconds: a deadline tighter than the server's",
    },
}


@dataclass(frozen=True)
class ProtocolModel:
    """A protocol model name, resolved: the checkpoint it serves and what it does with it."""

    name: str
    checkpoint: str
    task: Task

    def inputs(self, model: ServedModel, limits: Limits) -> dict[str, TensorSpec]:
        c, h, w = model.image_shape
        if self.task == "score":
            images = TensorSpec("images", "UINT8", (-1, c, h, w), max_elements=limits.max_images * c * h * w)
            return {"images": images}
        return {"num_samples": TensorSpec("num_samples", "INT64", (1,), accepts=INTEGER_TYPES)}

    def outputs(self, model: ServedModel) -> dict[str, TensorSpec]:
        if self.task == "sample":
            return {"images": TensorSpec("images", "UINT8", (-1, *model.image_shape))}
        specs = [TensorSpec(name, "FP64", (-1,)) for name in (*SCORE_OUTPUTS, *OOD_OUTPUTS[:2])]
        specs.append(TensorSpec("is_outlier", "BOOL", (-1,)))
        return {spec.name: spec for spec in specs}

    def required_inputs(self) -> set[str]:
        return {"images"} if self.task == "score" else set()


def protocol_names(checkpoint: str) -> list[str]:
    """The protocol models one checkpoint is."""
    return [checkpoint, checkpoint + SAMPLE_SUFFIX]


def resolve(name: str, registry: ModelRegistry) -> ProtocolModel:
    """The protocol model `name` names (a checkpoint's own name wins over the `.sample` reading)."""
    if registry.known(name):
        return ProtocolModel(name, name, "score")
    base = name.removesuffix(SAMPLE_SUFFIX)
    if name.endswith(SAMPLE_SUFFIX) and registry.known(base):
        return ProtocolModel(name, base, "sample")
    raise UnknownModel(f"unknown model {name!r}; available: {', '.join(protocol_names_of(registry))}")


def protocol_names_of(registry: ModelRegistry) -> list[str]:
    return [n for checkpoint in sorted(registry.entries) for n in protocol_names(checkpoint)]


def model_metadata(protocol: ProtocolModel, model: ServedModel, limits: Limits) -> dict[str, Any]:
    """The protocol's model metadata, with what this model is and takes in `parameters`."""
    version = str(model.version)
    sibling = protocol_names(protocol.checkpoint)[1 if protocol.task == "score" else 0]
    description = (
        "exact log-likelihoods of images, as POST /logprob"
        if protocol.task == "score"
        else "images sampled from the flow, as POST /sample"
    )
    return {
        "name": protocol.name,
        "versions": [version],
        "platform": PLATFORM,
        "inputs": [spec.metadata() for spec in protocol.inputs(model, limits).values()],
        "outputs": [spec.metadata() for spec in protocol.outputs(model).values()],
        "parameters": {
            "task": protocol.task,
            "description": f"{description}; {sibling} is the same weights' "
            + ("sampling" if protocol.task == "score" else "scoring"),
            "checkpoint": protocol.checkpoint,
            "model_version": version,
            "weights_sha256": model.weights_sha256,
            "architecture": model.flow.config.arch,
            "image_shape": list(model.image_shape),
            "backend": model.backend_label("score" if protocol.task == "score" else "sample"),
            "request_parameters": _PARAMETER_DOCS[protocol.task],
        },
    }


def _config_tensor(spec: TensorSpec, batched: bool) -> dict[str, Any]:
    """A tensor in Triton's model configuration: `TYPE_` datatypes, dims without the batch dimension; a
    batch of scalars is dims [1] reshaped to []."""
    dims = list(spec.shape[1:] if batched else spec.shape)
    tensor: dict[str, Any] = {"name": spec.name, "data_type": f"TYPE_{spec.datatype}", "dims": dims or [1]}
    if not dims:
        tensor["reshape"] = {"shape": []}
    return tensor


def model_config(protocol: ProtocolModel, model: ServedModel, limits: Limits) -> dict[str, Any]:
    """Triton's model configuration (`GET /v2/models/{name}/config`), which Triton's tools read before
    they send anything (perf_analyzer takes the batch dimension and the input shapes from it). Scoring
    batches on the first dimension up to the per-request image limit; sampling does not batch: its one
    input is the count."""
    batched = protocol.task == "score"
    config = {
        "name": protocol.name,
        "platform": PLATFORM,
        "backend": PLATFORM,
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": limits.max_images if batched else 0,
        "input": [_config_tensor(s, batched) for s in protocol.inputs(model, limits).values()],
        "output": [_config_tensor(s, batched) for s in protocol.outputs(model).values()],
        "parameters": {"task": {"string_value": protocol.task}},
    }
    if batched:
        config["dynamic_batching"] = {}  # requests join /logprob's batches
    return config


# -- request parameters -------------------------------------------------------------------------------
def _check_names(parameters: dict[str, Any], task: Task) -> None:
    allowed = set(_PARAMETER_DOCS[task]) | set(COMMON_PARAMETERS)
    unknown = sorted(set(parameters) - allowed)
    if unknown:
        raise InvalidInferenceRequest(
            f"unknown parameter {unknown[0]!r}; this model takes {', '.join(sorted(allowed))}"
        )


def _integer(parameters: dict[str, Any], name: str, low: int, high: int, default: int | None) -> int | None:
    value = parameters.get(name, default)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidInferenceRequest(f"parameter {name!r} must be an integer from {low} to {high}")
    return value


def _timeout_s(parameters: dict[str, Any], server_s: float) -> float:
    """The request's deadline: the server's, or the `timeout` parameter (microseconds) when tighter."""
    micros = _integer(parameters, "timeout", 1, 2**53, None)
    return server_s if micros is None else min(server_s, micros / 1e6)


@dataclass(frozen=True)
class ScoreParameters:
    samples: int
    ood: bool
    ood_fpr: float | None
    timeout_s: float


def score_parameters(
    parameters: dict[str, Any], requested: list[str] | None, timeout_s: float
) -> ScoreParameters:
    """A scoring request's parameters, checked as `/logprob` checks its fields; naming an
    out-of-distribution output turns `ood` on."""
    _check_names(parameters, "score")
    samples = _integer(parameters, "dequantization_samples", 1, MAX_DEQUANTIZATION_SAMPLES, 1)
    ood = parameters.get("ood", False)
    if not isinstance(ood, bool):
        raise InvalidInferenceRequest("parameter 'ood' must be true or false")
    ood = ood or any(name in OOD_OUTPUTS for name in requested or [])
    fpr = parameters.get("ood_fpr")
    if fpr is not None and (isinstance(fpr, bool) or fpr not in FPRS):
        raise InvalidInferenceRequest(
            f"parameter 'ood_fpr' must be one of {', '.join(f'{f:g}' for f in FPRS)}"
        )
    try:
        check_ood_options(ood, fpr, samples)
    except RequestValidationError as exc:
        first = exc.errors()[0]
        raise InvalidInferenceRequest(f"parameter {first['loc'][-1]!r} {first['msg']}") from None
    return ScoreParameters(
        samples, ood, None if fpr is None else float(fpr), _timeout_s(parameters, timeout_s)
    )


@dataclass(frozen=True)
class SampleParameters:
    num_samples: int
    seed: int | None
    temperature: float
    timeout_s: float


def sample_parameters(
    parameters: dict[str, Any], inputs: dict[str, np.ndarray], timeout_s: float, limits: Limits
) -> SampleParameters:
    """A sampling request's parameters and `num_samples` (input or parameter, not both), checked as
    `/sample` checks its fields."""
    _check_names(parameters, "sample")
    given = inputs.get("num_samples")
    if given is not None and "num_samples" in parameters:
        raise InvalidInferenceRequest("give num_samples as an input or as a parameter, not both")
    if given is not None:
        n = int(given.reshape(-1)[0])
        if n < 1:
            raise InvalidInferenceRequest(f"input 'num_samples' must be at least 1, got {n}")
    else:
        n = _integer(parameters, "num_samples", 1, 2**31, None)
        if n is None:
            raise InvalidInferenceRequest(
                "no num_samples: give the input num_samples (INT64 [1]) or the parameter"
            )
    limits.check_samples(n, "num_samples")
    seed = _integer(parameters, "seed", 0, MAX_SEED, None)
    temperature = parameters.get("temperature", 1.0)
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
        raise InvalidInferenceRequest("parameter 'temperature' must be a number from 0 to 2")
    return SampleParameters(n, seed, float(temperature), _timeout_s(parameters, timeout_s))

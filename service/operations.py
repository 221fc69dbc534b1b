"""Typed batch operations, one per kind of endpoint: the model API apart from the batching loop (LitServe's
`decode_request / batch / predict / unbatch` split, minus its loops, which are `service.batching`).

An operation names its input and output types, how requests form a batch and how a batch's output is split
back per request, and `predict`. Inputs and outputs are row data: a tensor, or a dataclass whose fields
are tensors or tuples of tensors that share their first dimension (one row per image). The defaults batch
and split row data by concatenating and slicing every field; an operation overrides them only when its
rows need something else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar, Generic, TypeVar

import torch

from model.scoring import Encoding, bits_per_dim

from .model_api import ServedModel

__all__ = [
    "OPERATIONS",
    "Encode",
    "EncodeInput",
    "LatentsInput",
    "LogProb",
    "LogProbInput",
    "ModelOperation",
    "Operation",
    "Sample",
    "Scores",
    "concat_rows",
    "count_rows",
    "split_rows",
]

In = TypeVar("In")
Out = TypeVar("Out")
R = TypeVar("R")


def _fields(data: Any) -> list[Any]:
    return [getattr(data, f.name) for f in fields(data)]


def count_rows(data: Any) -> int:
    """Rows of row data; every tensor in it must have that many."""
    if isinstance(data, torch.Tensor):
        return data.shape[0]
    parts = data if isinstance(data, tuple) else _fields(data)
    counts = {count_rows(part) for part in parts}
    if len(counts) != 1:
        raise ValueError(f"row data whose parts have different numbers of rows: {sorted(counts)}")
    return counts.pop()


def _take(data: R, start: int, stop: int) -> R:
    if isinstance(data, torch.Tensor):
        return data[start:stop]
    if isinstance(data, tuple):
        return tuple(_take(part, start, stop) for part in data)  # type: ignore[return-value]
    return replace(data, **{f.name: _take(getattr(data, f.name), start, stop) for f in fields(data)})


def split_rows(data: R, sizes: Sequence[int]) -> list[R]:
    """Consecutive pieces of `sizes` rows each (views, no copies)."""
    pieces, start = [], 0
    for size in sizes:
        pieces.append(_take(data, start, start + size))
        start += size
    return pieces


def concat_rows(parts: Sequence[R]) -> R:
    """The rows of `parts`, in order, as one piece of the same type (a single part is returned as is)."""
    first = parts[0]
    if len(parts) == 1:
        return first
    if isinstance(first, torch.Tensor):
        return torch.cat(list(parts))  # type: ignore[return-value]
    if isinstance(first, tuple):
        return tuple(concat_rows(level) for level in zip(*parts, strict=True))  # type: ignore[return-value]
    return replace(first, **{f.name: concat_rows([getattr(p, f.name) for p in parts]) for f in fields(first)})


class Operation(Generic[In, Out]):
    """One kind of batched work. `name` labels its queue and metrics; `predict` runs one batch (under
    `torch.inference_mode()`, on the inference thread or the event loop) and returns one output row per
    input row, which the batcher checks."""

    name: ClassVar[str]

    def predict(self, batch: In) -> Out:
        raise NotImplementedError

    def size(self, data: In | Out) -> int:
        """Images in a request, a batch or an output."""
        return count_rows(data)

    def row_costs(self, data: In) -> list[int]:
        """The work of each image of a request, in the batcher's units (one pass over one image is 1):
        what queues, batches and admission count."""
        return [1] * count_rows(data)

    def batch(self, requests: Sequence[In]) -> In:
        """Requests (or chunks of requests) → one batch."""
        return concat_rows(requests)

    def split(self, data: In, sizes: Sequence[int]) -> list[In]:
        """A request → chunks of `sizes` images (a request larger than a batch; a batch halved on OOM)."""
        return split_rows(data, sizes)

    def unbatch(self, output: Out, sizes: Sequence[int]) -> list[Out]:
        """A batch's output → each request's (or chunk's) rows."""
        return split_rows(output, sizes)

    def join(self, outputs: Sequence[Out]) -> Out:
        """The outputs of one request's chunks → the request's output."""
        return concat_rows(outputs)


class ModelOperation(Operation[In, Out]):
    """An operation of one served model (what `OPERATIONS` holds: built once per model)."""

    def __init__(self, model: ServedModel):
        self.model = model


@dataclass(frozen=True)
class LatentsInput:
    """Latents to decode: one `(N, C, H, W)` tensor per level, finest first, temperature applied."""

    latents: tuple[torch.Tensor, ...]


class Sample(ModelOperation[LatentsInput, torch.Tensor]):
    """Latents → `uint8` images `(N, C, H, W)`. Serves /sample, /decode and /interpolate: all three
    decode latents, so their requests share batches."""

    name = "sample"

    def predict(self, batch: LatentsInput) -> torch.Tensor:
        return self.model.decode(batch.latents)


@dataclass(frozen=True)
class LogProbInput:
    """Images to score: `uint8 (N, C, H, W)`, and K of the importance-weighted bound per image (int64):
    requests with different K share a batch, which runs one pass per distinct K."""

    images: torch.Tensor
    samples: torch.Tensor


@dataclass(frozen=True)
class Scores:
    """Per image: log-probability of the discrete image (nats) and bits/dim, float64."""

    log_prob: torch.Tensor
    bits_per_dim: torch.Tensor


class LogProb(ModelOperation[LogProbInput, Scores]):
    """Images → their `Scores` (POST /logprob), on the density backend the model chose for its `score`
    pass (torch or onnxruntime)."""

    name = "logprob"

    def row_costs(self, data: LogProbInput) -> list[int]:
        """An image scored at K dequantisation samples is K passes."""
        return [int(k) for k in data.samples.tolist()]

    def predict(self, batch: LogProbInput) -> Scores:
        log_prob = self.model.logprob(batch.images, batch.samples)
        return Scores(log_prob, bits_per_dim(log_prob, self.model.num_dims))


@dataclass(frozen=True)
class EncodeInput:
    """Images to encode: `uint8 (N, C, H, W)`, and per image whether at its hashed noise (else mid-bin)."""

    images: torch.Tensor
    hashed: torch.Tensor


class Encode(ModelOperation[EncodeInput, Encoding]):
    """Images → latents per level and log-dets (POST /encode, and /interpolate's image ends)."""

    name = "encode"

    def predict(self, batch: EncodeInput) -> Encoding:
        return self.model.encode(batch.images, batch.hashed)


# The operations every served model gets a batcher for (`ServedEntry` has one field per name).
OPERATIONS: tuple[type[ModelOperation], ...] = (Sample, LogProb, Encode)

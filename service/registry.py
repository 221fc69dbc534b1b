"""Every checkpoint directory under the models folder, loaded once, with one batcher per operation."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from model.scoring import Encoding

from .batching import Batcher, InferenceThread
from .errors import UnknownModel
from .metrics import Metrics
from .model_api import ServedModel
from .operations import OPERATIONS, EncodeInput, LatentsInput, LogProbInput, Scores
from .runtime import Runtime
from .settings import Settings

__all__ = ["ModelRegistry", "ServedEntry", "checkpoint_dirs"]

log = logging.getLogger("service.registry")
PREFERRED_DEFAULT = "finc-mnist"


def checkpoint_dirs(models: Path) -> list[Path]:
    """The served checkpoints: every directory under `models` holding a config.json, sorted by name."""
    return sorted(p for p in models.iterdir() if (p / "config.json").is_file())


@dataclass
class ServedEntry:
    """A served model and its batchers, one field per operation in `OPERATIONS`, named as the operation."""

    model: ServedModel
    sample: Batcher[LatentsInput, torch.Tensor]
    logprob: Batcher[LogProbInput, Scores]
    encode: Batcher[EncodeInput, Encoding]

    def batchers(self) -> list[Batcher]:
        return [getattr(self, operation.name) for operation in OPERATIONS]


class ModelRegistry:
    def __init__(self, entries: dict[str, ServedEntry], default: str):
        self.entries, self.default = entries, default

    @classmethod
    def load(
        cls, settings: Settings, runtime: Runtime, inference: InferenceThread, metrics: Metrics
    ) -> ModelRegistry:
        """Load every checkpoint on `runtime.device` (onnxruntime with `runtime.threads` intra-op threads) and
        build its batchers from `OPERATIONS`."""
        dirs = checkpoint_dirs(settings.models)
        if not dirs:
            raise RuntimeError(f"no checkpoints (directories with config.json) under {settings.models}")
        limits = dict(
            max_batch_images=settings.max_batch_images,
            max_wait_s=settings.max_wait_ms / 1000,
            max_queue_images=settings.max_queue_images,
            overload_status=settings.overload_status,
            retry_after_s=settings.retry_after_s,
        )
        entries = {}
        for path in dirs:
            model = ServedModel.load(
                path, runtime.device, settings.backend, runtime.threads, settings.precision
            )
            batchers = {
                op.name: Batcher(model.name, op(model), inference, metrics, **limits) for op in OPERATIONS
            }
            entries[model.name] = ServedEntry(model, **batchers)
            log.info(
                "loaded %s (%s, %d parameters) on %s",
                model.name,
                model.flow.config.arch,
                model.flow.num_parameters(),
                runtime.device,
            )
        default = settings.default_model or (
            PREFERRED_DEFAULT if PREFERRED_DEFAULT in entries else dirs[0].name
        )
        if default not in entries:
            raise RuntimeError(f"default model {default!r} is not among {sorted(entries)}")
        return cls(entries, default)

    def get(self, name: str | None) -> ServedEntry:
        key = name or self.default
        if key not in self.entries:
            raise UnknownModel(f"unknown model {key!r}; available: {', '.join(sorted(self.entries))}")
        return self.entries[key]

    def batchers(self) -> list[Batcher]:
        return [b for e in self.entries.values() for b in e.batchers()]

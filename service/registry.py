"""Every checkpoint directory under the models folder, loaded once, with one batcher per operation."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from model import CheckpointError
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


def _bad_model(settings: Settings, name: str, exc: Exception, unavailable: dict[str, str]) -> None:
    """A checkpoint that cannot serve: stop start-up with the reason, or record it and go on."""
    if settings.on_bad_model == "fail":
        raise RuntimeError(f"model {name!r} cannot be served: {exc} (--on-bad-model skip serves the others)")
    log.error("model %s skipped: %s", name, exc)
    unavailable[name] = str(exc)


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
    """The served models by name; `unavailable` holds the checkpoints skipped (`--on-bad-model skip`)
    with the reason each was."""

    def __init__(
        self, entries: dict[str, ServedEntry], default: str, unavailable: dict[str, str] | None = None
    ):
        self.entries, self.default = entries, default
        self.unavailable = dict(unavailable or {})

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
        entries, unavailable = {}, {}
        for path in dirs:
            try:
                model = ServedModel.load(
                    path, runtime.device, settings.backend, runtime.threads, settings.precision
                )
            except (CheckpointError, RuntimeError, OSError) as exc:
                _bad_model(settings, path.name, exc, unavailable)
                continue
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
        if not entries:
            raise RuntimeError(f"no checkpoint under {settings.models} could be loaded: {unavailable}")
        default = settings.default_model or (
            PREFERRED_DEFAULT if PREFERRED_DEFAULT in entries else sorted(entries)[0]
        )
        if default not in entries:
            raise RuntimeError(f"default model {default!r} is not among {sorted(entries)}")
        return cls(entries, default, unavailable)

    def warm_up(self, settings: Settings, batch_sizes: list[int]) -> None:
        """Every model's passes at every batch size in use; a model whose outputs are not finite stops
        start-up or is set aside, as `--on-bad-model` says."""
        for name, entry in list(self.entries.items()):
            try:
                entry.model.warm_up(batch_sizes)
            except CheckpointError as exc:
                _bad_model(settings, name, exc, self.unavailable)
                del self.entries[name]
        if self.default not in self.entries:
            raise RuntimeError(f"the default model {self.default!r} failed its warm-up: {self.unavailable}")

    def get(self, name: str | None) -> ServedEntry:
        key = name or self.default
        if key not in self.entries:
            raise UnknownModel(f"unknown model {key!r}; available: {', '.join(sorted(self.entries))}")
        return self.entries[key]

    def batchers(self) -> list[Batcher]:
        return [b for e in self.entries.values() for b in e.batchers()]

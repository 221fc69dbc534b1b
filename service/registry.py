"""Every checkpoint directory under the models folder, loaded once, with one batcher per operation."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .batching import Batcher, InferenceThread
from .errors import UnknownModel
from .metrics import Metrics
from .model_api import ServedModel, prepare_kernels
from .settings import Settings

__all__ = ["ModelRegistry", "ServedEntry", "checkpoint_dirs"]

log = logging.getLogger("service.registry")
PREFERRED_DEFAULT = "finc-mnist"


def checkpoint_dirs(models: Path) -> list[Path]:
    """The served checkpoints: every directory under `models` holding a config.json, sorted by name."""
    return sorted(p for p in models.iterdir() if (p / "config.json").is_file())


@dataclass
class ServedEntry:
    model: ServedModel
    sample: Batcher  # also serves /decode and /interpolate: both decode latents
    logprob: Batcher
    encode: Batcher


class ModelRegistry:
    def __init__(self, entries: dict[str, ServedEntry], default: str):
        self.entries, self.default = entries, default

    @classmethod
    def load(
        cls, settings: Settings, device, inference: InferenceThread, metrics: Metrics, threads: int = 0
    ) -> ModelRegistry:
        """`threads`: onnxruntime's intra-op threads (0: its default), as resolved for torch."""
        dirs = checkpoint_dirs(settings.models)
        if not dirs:
            raise RuntimeError(f"no checkpoints (directories with config.json) under {settings.models}")
        prepare_kernels(device)  # before any model runs: no request ever waits for a compiler
        entries = {}
        for path in dirs:
            model = ServedModel.load(path, device, settings.backend, threads)
            common = dict(
                max_batch_images=settings.max_batch_images,
                max_wait_s=settings.max_wait_ms / 1000,
                max_queue_images=settings.max_queue_images,
                overload_status=settings.overload_status,
                retry_after_s=settings.retry_after_s,
            )
            entries[model.name] = ServedEntry(
                model,
                Batcher(model.name, "sample", model.decode, inference, metrics, **common),
                Batcher(
                    model.name, "logprob", lambda xs, m=model: m.score(*xs), inference, metrics, **common
                ),
                Batcher(
                    model.name, "encode", lambda xs, m=model: m.encode(*xs), inference, metrics, **common
                ),
            )
            log.info(
                "loaded %s (%s, %d parameters) on %s",
                model.name,
                model.flow.config.arch,
                model.flow.num_parameters(),
                device,
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
        return [b for e in self.entries.values() for b in (e.sample, e.logprob, e.encode)]

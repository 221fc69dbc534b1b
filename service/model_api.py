"""The served model: one checkpoint with the backend chosen for each pass; decodes, scores and encodes a
batch through `model.sampling` and `model.scoring`. Knows nothing about queues."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import kernels_cuda
from model import MultiScaleFlow, load_flow, read_config
from model.architectures import Pass, get_architecture
from model.sampling import Decoder, draw_latents, onnx_decoder, torch_decoder
from model.scoring import Encoding, LogDensity, encode, log_prob, onnx_log_density, torch_log_density

from .onnx_backend import OnnxPass, load_onnx_passes
from .ood import OodReference

__all__ = ["ServedModel"]

log = logging.getLogger("service.model")


@dataclass
class ServedModel:
    """`backend` is `torch`, `onnx` (exported passes on onnxruntime, the rest on torch) or `auto`
    (both measured at warm-up; the faster serves each pass). `use_onnx` says, per pass, which serves."""

    name: str
    path: Path
    flow: MultiScaleFlow
    config: dict[str, Any]
    device: torch.device
    backend: str = "torch"
    onnx: dict[str, OnnxPass] = field(default_factory=dict)
    use_onnx: dict[str, bool] = field(default_factory=dict)
    ood: OodReference = field(default_factory=OodReference)  # out-of-distribution statistics (service/ood.py)

    @classmethod
    def load(cls, path: Path, device: torch.device, backend: str = "torch", threads: int = 0) -> ServedModel:
        flow = load_flow(path, device=device).freeze()
        onnx: dict[str, OnnxPass] = {}
        if backend == "onnx":
            onnx = load_onnx_passes(path, device, threads)
        elif backend == "auto":
            try:
                onnx = load_onnx_passes(path, device, threads)
            except (ImportError, RuntimeError) as exc:
                log.warning("%s: ONNX graphs not used, serving on torch: %s", path.name, exc)
        if backend == "onnx" and not onnx:
            log.warning(
                "%s has no exported ONNX passes (python -m model.export %s): serving on torch",
                path.name,
                path,
            )
        model = cls(path.name, path, flow, read_config(path), device, backend, onnx)
        model.use_onnx = {name: True for name in onnx}
        model.ood = OodReference.load(path)
        return model

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.flow.config.image_shape)  # type: ignore[return-value]

    @property
    def num_dims(self) -> int:
        return self.flow.num_dims

    # -- the passes, on the backend chosen for each ------------------------------------------------------
    def _decoder(self) -> Decoder:
        return onnx_decoder(self.onnx["sample"]) if self.use_onnx.get("sample") else torch_decoder(self.flow)

    def _log_density(self) -> LogDensity:
        return (
            onnx_log_density(self.onnx["score"])
            if self.use_onnx.get("score")
            else torch_log_density(self.flow)
        )

    def draw_latents(self, n: int, temperature: float, seed: int) -> list[torch.Tensor]:
        """This request's noise, from its own CPU generator: independent of what it is batched with."""
        return draw_latents(self.flow, n, temperature, seed)

    def decode(self, latents: Sequence[torch.Tensor]) -> torch.Tensor:
        """Latents (one tensor per level, temperature applied) → `uint8` images on the CPU."""
        return self._decoder()(latents)

    def logprob(self, images: torch.Tensor, samples: int | torch.Tensor = 1) -> torch.Tensor:
        """`uint8` images → log-probabilities (nats, float64 on the CPU); `samples` is K of the
        importance-weighted bound, for the batch or per image."""
        return log_prob(self._log_density(), images, samples)

    def encode(self, images: torch.Tensor, hashed: torch.Tensor | None = None) -> Encoding:
        """`uint8` images → latents and log-dets, at the bin centre or (where `hashed`) the scored point."""
        return encode(self.flow, images, hashed)

    # -- warm-up and backend choice ----------------------------------------------------------------------
    def _choose_backends(self, n: int) -> None:
        """`auto`: time torch and onnxruntime on a batch of `n` for each exported pass; keep the faster."""
        images = self.decode(self.draw_latents(n, 1.0, seed=0))
        latents = self.draw_latents(n, 1.0, seed=1)
        work: dict[str, Callable[[], object]] = {
            "sample": lambda: self.decode(latents),
            "score": lambda: self.logprob(images),
        }
        for name in self.onnx:
            times = {}
            for use in (False, True):
                self.use_onnx[name] = use
                work[name]()
                runs = []
                for _ in range(3):
                    start = time.perf_counter()
                    work[name]()
                    runs.append(time.perf_counter() - start)
                times[use] = statistics.median(runs)
            self.use_onnx[name] = times[True] < times[False]
            log.info(
                "%s/%s at batch %d: torch %.1f ms, onnxruntime %.1f ms -> %s",
                self.name,
                name,
                n,
                1e3 * times[False],
                1e3 * times[True],
                "onnx" if self.use_onnx[name] else "torch",
            )

    def warm_up(self, batch_sizes: list[int]) -> None:
        """Run every pass at every batch size we use, so the first requests pay no first-call costs."""
        with torch.inference_mode():
            if self.backend == "auto" and self.onnx:
                self._choose_backends(max(batch_sizes))
            for n in batch_sizes:
                images = self.decode(self.draw_latents(n, 1.0, seed=0))
                self.logprob(images)
            self.encode(images[:1])
        log.info("warmed up %s on %s at batch sizes %s", self.name, self.device, batch_sizes)

    # -- description -------------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        training = self.config.get("training", {})
        return {
            "name": self.name,
            "architecture": self.flow.config.arch,
            "config": self.flow.config.model_dump(mode="json"),
            "image_shape": list(self.image_shape),
            "num_parameters": self.flow.num_parameters(),
            "test_bits_per_dim": training.get("test_bits_per_dim"),
            "dataset": training.get("dataset"),
            "device": str(self.device),
            "backend": {"sample": self.backend_label("sample"), "logprob": self.backend_label("score")},
        }

    def backend_label(self, name: Pass) -> str:
        """What serves a pass: `onnxruntime:<provider>`, `torch:<device>`, or `torch:<device>+solve:<kernel>`
        for the architecture's solve pass when a compiled solve serves it (`cpu`, `cuda`)."""
        if self.use_onnx.get(name):
            return f"onnxruntime:{self.onnx[name].provider}"
        solves = get_architecture(self.flow.config.arch).solve_pass == name
        kernel = kernels_cuda.serving_backend(self.device) if solves else "torch"
        return f"torch:{self.device.type}" + ("" if kernel == "torch" else f"+solve:{kernel}")

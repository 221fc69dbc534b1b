"""The served model: draws latents, decodes, scores and encodes a batch. Knows nothing about queues."""

from __future__ import annotations

import logging
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import kernels_cuda
from kernels_cuda import cuda_backend
from model import MultiScaleFlow, load_flow, read_config
from model.architectures import get_architecture
from model.flow import importance_weighted_log_prob
from model.layers.preprocess import hashed_noise

from .onnx_backend import OnnxPass, load_onnx_passes

__all__ = ["ServedModel", "prepare_kernels", "resolve_device", "resolve_threads"]

log = logging.getLogger("service.model")


def prepare_kernels(device: torch.device) -> bool:
    """At start-up, never in a request: build (or load the cached) CUDA solve kernels for a CUDA device.
    A failure is logged once (kernels_cuda/loader.py) and the torch path serves, shown as `torch:cuda` in
    `/models`; it is retried at the next start-up (or by `kernels_cuda.load_cuda_kernels()`), never by a
    request."""
    if device.type != "cuda":
        return False
    ok = kernels_cuda.load_cuda_kernels(retry=True)
    if ok:
        log.info("CUDA solve kernels loaded: solves run as torch:cuda+kernels")
    return ok


def resolve_device(requested: str) -> torch.device:
    """`auto` → CUDA when present; `cuda` without a GPU fails loudly instead of silently using the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but no CUDA device is available")
    return torch.device(requested)


def resolve_threads(requested: int, device: torch.device) -> int:
    """Intra-op threads for inference; 0 means "leave the library defaults". `requested` 0 (auto) on a CPU
    device: one fewer than the usable cores, at least 1, so the event loop keeps a core for HTTP, decoding
    and encoding instead of contending with inference (on 2 cores that halved the idle overhead and doubled
    small-request throughput: benchmarks/results/load_*.json). Where `OMP_NUM_THREADS` is set (Ray sets it
    per replica) or on a GPU, the defaults stay."""
    if requested or device.type != "cpu" or os.environ.get("OMP_NUM_THREADS"):
        return requested
    return max(1, len(os.sched_getaffinity(0)) - 1)


@dataclass
class ServedModel:
    """`backend` is `torch`, `onnx` (exported passes on onnxruntime, the rest on torch) or `auto`
    (both measured at warm-up; the faster serves each pass)."""

    name: str
    path: Path
    flow: MultiScaleFlow
    config: dict[str, Any]
    device: torch.device
    backend: str = "torch"
    onnx: dict[str, OnnxPass] = field(default_factory=dict)
    use_onnx: dict[str, bool] = field(default_factory=dict)

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
        return model

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.flow.config.image_shape)  # type: ignore[return-value]

    @property
    def num_dims(self) -> int:
        return self.flow.num_dims

    def draw_latents(self, n: int, temperature: float, seed: int) -> list[torch.Tensor]:
        """This request's noise, from its own CPU generator: independent of what it is batched with."""
        generator = torch.Generator().manual_seed(seed)
        shapes = self.flow.latent_shapes()
        return [torch.randn((n, *s), generator=generator) * temperature for s in shapes]

    def decode(self, latents: list[torch.Tensor]) -> torch.Tensor:
        """Latents (one tensor per level, temperature applied) → `uint8` images on the CPU."""
        if self.use_onnx.get("sample"):
            feed = {"temperature": np.ones(1, dtype=np.float32)}
            feed.update({f"z{i}": z.numpy().astype(np.float32, copy=False) for i, z in enumerate(latents)})
            pixels = torch.from_numpy(self.onnx["sample"].run(feed))
        else:
            pixels = self.flow.decode([z.to(self.device) for z in latents])
        return self.flow.to_uint8(pixels).cpu()

    def _log_density(self, x: torch.Tensor) -> torch.Tensor:
        """Dequantised (continuous, float32, CPU) images → log-densities (nats, float64 on the CPU)."""
        if self.use_onnx.get("score"):
            return torch.from_numpy(self.onnx["score"].run({"images": x.numpy()})).double()
        return self.flow.log_prob_continuous(x.to(self.device)).double().cpu()

    def score(self, images: torch.Tensor, samples: torch.Tensor | None = None) -> torch.Tensor:
        """`uint8` images → log-probabilities (nats, float64 on the CPU). `samples` (one int per image,
        default 1) is K of the importance-weighted bound over K hashed dequantisations of that image."""
        x = images.float()
        if samples is None or bool((samples == samples[0]).all()):  # one K for the batch: the common case
            k = 1 if samples is None else int(samples[0])
            return importance_weighted_log_prob(self._log_density, x, k)
        out = torch.empty(x.shape[0], dtype=torch.float64)
        for k in samples.unique().tolist():  # one pass per distinct K in the batch
            rows = (samples == k).nonzero().squeeze(1)
            out[rows] = importance_weighted_log_prob(self._log_density, x[rows], int(k))
        return out

    def encode(self, images: torch.Tensor, hashed: torch.Tensor | None = None) -> torch.Tensor:
        """`uint8` images → float64 rows `[every level's latents, flattened, finest first | log|det ∂z/∂x|]`
        at the bin centre `x + 0.5` (default: decoding lands mid-bin, so `decode` gives `x` back with
        room to spare), or where `hashed` (a bool per image) at `x + u` with `u` the image's hashed noise,
        the point `score` evaluates. One tensor so the batcher can split rows; `unpack_encoded` undoes it."""
        x = images.float()
        noise = torch.full_like(x, 0.5)
        if hashed is not None and bool(hashed.any()):
            rows = hashed.nonzero().squeeze(1)
            noise[rows] = hashed_noise(x[rows])
        latents, logdet = self.flow.encode((x + noise).to(self.device))
        parts = [z.flatten(1).double().cpu() for z in latents]
        return torch.cat([*parts, logdet.double().cpu()[:, None]], dim=1)

    def unpack_encoded(self, rows: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """`encode`'s rows → (float32 latents `(N, C, H, W)` per level, float64 log-dets `(N,)`, float64
        log-densities `log N(z) + log-det` `(N,)`)."""
        latents, start = [], 0
        for shape in self.flow.latent_shapes():
            size = math.prod(shape)
            latents.append(rows[:, start : start + size].reshape(-1, *shape))
            start += size
        log_det = rows[:, start]
        log_prob = self.flow.prior_log_prob(latents) + log_det
        return [z.float() for z in latents], log_det, log_prob

    def _choose_backends(self, n: int) -> None:
        """`auto`: time torch and onnxruntime on a batch of `n` for each exported pass; keep the faster."""
        images = self.decode(self.draw_latents(n, 1.0, seed=0))
        latents = self.draw_latents(n, 1.0, seed=1)
        work: dict[str, Callable[[], object]] = {
            "sample": lambda: self.decode(latents),
            "score": lambda: self.score(images),
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

    def bits_per_dim(self, log_prob: torch.Tensor) -> torch.Tensor:
        return -log_prob / (self.num_dims * math.log(2))

    def warm_up(self, batch_sizes: list[int]) -> None:
        """Run both passes at every batch size we use, so the first requests pay no first-call costs."""
        with torch.inference_mode():
            if self.backend == "auto" and self.onnx:
                self._choose_backends(max(batch_sizes))
            for n in batch_sizes:
                images = self.decode(self.draw_latents(n, 1.0, seed=0))
                self.score(images)
            self.encode(images[:1])
        log.info("warmed up %s on %s at batch sizes %s", self.name, self.device, batch_sizes)

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
            "backend": {
                "sample": self._backend_label("sample"),
                "logprob": self._backend_label("score"),
            },
        }

    def _backend_label(self, name: str) -> str:
        if self.use_onnx.get(name):
            return f"onnxruntime:{self.onnx[name].provider}"
        solves = get_architecture(self.flow.config.arch).solve_pass == name
        if solves and self.device.type == "cuda" and cuda_backend.loaded():
            # What dispatch picks for this device (FLOWS_KERNELS=torch forces the reference).
            probe = torch.empty(0, device=self.device)
            if kernels_cuda.resolve_backend(probe) == "cuda":
                return "torch:cuda+kernels"
        return f"torch:{self.device.type}"

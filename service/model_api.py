"""The served model: one checkpoint with the backend chosen for each pass; decodes, scores and encodes a
batch through `model.sampling` and `model.scoring`. Knows nothing about queues."""

from __future__ import annotations

import copy
import logging
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import kernels_cuda
from model import CheckpointError, MultiScaleFlow, load_flow, read_config
from model.architectures import Pass, get_architecture
from model.export import weights_digest
from model.hardware import native_bfloat16
from model.layers import subnets_channels_last
from model.sampling import Decoder, draw_latents, onnx_decoder, torch_decoder
from model.scoring import Encoding, LogDensity, encode, log_prob, onnx_log_density, torch_log_density

from .onnx_backend import OnnxPass, load_onnx_passes
from .ood import OodReference

__all__ = ["ServedModel"]

FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def _finite_rows(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per row: every value of every tensor finite."""
    return torch.stack([torch.isfinite(t).flatten(1).all(1) for t in tensors]).all(0)


def _beyond_float32(latents: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per row: some latent's magnitude is more than float32 holds."""
    return torch.stack([z.abs().flatten(1).amax(1) > FLOAT32_MAX for z in latents]).any(0)


log = logging.getLogger("service.model")


@dataclass
class ServedModel:
    """`backend` is `torch`, `onnx` (exported passes on onnxruntime, the rest on torch) or `auto`
    (both measured at warm-up; the faster serves each pass). `use_onnx` says, per pass, which serves.
    `version` is the model version this checkpoint is (service/repository.py), `weights_sha256` the
    SHA-256 of its `model.safetensors`: together they say which weights answered a request."""

    name: str
    path: Path
    flow: MultiScaleFlow
    config: dict[str, Any]
    device: torch.device
    backend: str = "torch"
    onnx: dict[str, OnnxPass] = field(default_factory=dict)
    use_onnx: dict[str, bool] = field(default_factory=dict)
    sample_dtype: torch.dtype | None = None  # bfloat16: sampling's coupling networks under autocast
    exact: MultiScaleFlow | None = None  # a float64 copy, made when an image first needs it (below)
    ood: OodReference = field(default_factory=OodReference)  # out-of-distribution statistics (service/ood.py)
    version: int = 1
    weights_sha256: str = ""
    _exact_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def load(
        cls,
        path: Path,
        device: torch.device,
        backend: str = "torch",
        threads: int = 0,
        precision: str = "float32",
        name: str | None = None,
        version: int = 1,
        onnx_cache: Path | None = None,
    ) -> ServedModel:
        """The checkpoint at `path`, frozen for inference, its coupling networks channels-last (oneDNN's
        and cuDNN's fast layout; the same float32 results up to rounding), with the ONNX passes `backend`
        asks for. `precision` bf16 samples with bfloat16 coupling networks on torch, where the hardware
        computes bfloat16 natively (so that pass never goes to onnxruntime's float32 graph). It is served
        as `name` (default: the folder's name) at `version`. A folder that ships no ONNX graphs gets them
        exported into `onnx_cache` (None: it is served on torch)."""
        flow = subnets_channels_last(load_flow(path, device=device).freeze())
        sample_dtype = None
        if precision == "bf16":
            if native_bfloat16(device):
                sample_dtype = torch.bfloat16
            else:
                log.warning(
                    "%s: bf16 sampling asked for, but %s has no native bfloat16: float32", path.name, device
                )
        onnx: dict[str, OnnxPass] = {}
        if backend == "onnx":
            onnx = load_onnx_passes(path, device, threads, onnx_cache)
        elif backend == "auto":
            try:
                onnx = load_onnx_passes(path, device, threads, onnx_cache)
            except (ImportError, RuntimeError) as exc:
                log.warning("%s: ONNX graphs not used, serving on torch: %s", path.name, exc)
        if backend == "onnx" and not onnx:
            log.warning(
                "%s has no exported ONNX passes (python -m model.export %s): serving on torch",
                path.name,
                path,
            )
        if sample_dtype is not None:
            onnx.pop("sample", None)
        config = read_config(path)
        model = cls(
            name or path.name,
            path,
            flow,
            config,
            device,
            backend,
            onnx,
            sample_dtype=sample_dtype,
            version=version,
            weights_sha256=weights_digest(path),
        )
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
        if self.use_onnx.get("sample"):
            return onnx_decoder(self.onnx["sample"])
        return torch_decoder(self.flow, self.sample_dtype)

    def _log_density(self) -> LogDensity:
        return (
            onnx_log_density(self.onnx["score"])
            if self.use_onnx.get("score")
            else torch_log_density(self.flow)
        )

    def draw_latents(self, n: int, temperature: float, seed: int) -> list[torch.Tensor]:
        """This request's noise, from its own CPU generator: independent of what it is batched with."""
        return draw_latents(self.flow, n, temperature, seed)

    # Every pass runs in float32. Where an image's numbers leave float32's range (a saturated image under a
    # split prior that extrapolates to σ ≈ 1e-55: latents of 1e55, log p of -1e110; docs/math.md), those
    # images are computed again in float64 by `exact`, so that every number returned is finite where the
    # model's own is. The float64 copy is made the first time an image needs it: most versions never do.
    def _float64(self) -> MultiScaleFlow:
        with self._exact_lock, torch.inference_mode(False):
            if self.exact is None:
                self.exact = copy.deepcopy(self.flow).freeze(False).double().freeze()
        return self.exact

    def decode(self, latents: Sequence[torch.Tensor]) -> torch.Tensor:
        """Latents (one tensor per level, temperature applied) → `uint8` images on the CPU; rows with
        latents beyond float32's range decode in float64."""
        big = _beyond_float32(latents)
        if not bool(big.any()):
            return self._decoder()(latents)
        images = torch.empty((latents[0].shape[0], *self.image_shape), dtype=torch.uint8)
        small = ~big
        if bool(small.any()):
            images[small] = self._decoder()([z[small] for z in latents])
        images[big] = torch_decoder(self._float64())([z[big].double() for z in latents])
        return images

    def logprob(self, images: torch.Tensor, samples: int | torch.Tensor = 1) -> torch.Tensor:
        """`uint8` images → log-probabilities (nats, float64 on the CPU); `samples` is K of the
        importance-weighted bound, for the batch or per image. Images whose float32 score is not finite
        are scored again in float64 (still not finite: the model's density itself, left as it is)."""
        scores = log_prob(self._log_density(), images, samples)
        bad = ~torch.isfinite(scores)
        if bool(bad.any()):
            k = samples if isinstance(samples, int) else samples[bad]
            scores[bad] = log_prob(torch_log_density(self._float64()), images[bad], k)
        return scores

    def encode(self, images: torch.Tensor, hashed: torch.Tensor | None = None) -> Encoding:
        """`uint8` images → latents and log-dets, at the bin centre or (where `hashed`) the scored point;
        when some image's latents overflow float32, the batch's latents come back in float64."""
        encoding = encode(self.flow, images, hashed)
        bad = ~(torch.isfinite(encoding.log_prob) & _finite_rows(encoding.latents))
        if not bool(bad.any()):
            return encoding
        again = encode(self._float64(), images[bad], None if hashed is None else hashed[bad], torch.float64)
        latents = [z.double() for z in encoding.latents]
        for z, exact in zip(latents, again.latents, strict=True):
            z[bad] = exact
        log_det, log_prob_ = encoding.log_det.clone(), encoding.log_prob.clone()
        log_det[bad], log_prob_[bad] = again.log_det, again.log_prob
        return Encoding(tuple(latents), log_det, log_prob_)

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
                scores = self.logprob(images)
                if not bool(torch.isfinite(scores).all()):
                    raise CheckpointError(f"{self.path}: warm-up scored its own samples as non-finite")
            encoding = self.encode(images[:1])
            if not bool(torch.isfinite(encoding.log_det).all()):
                raise CheckpointError(f"{self.path}: warm-up encoded an image to a non-finite log-det")
        log.info("warmed up %s on %s at batch sizes %s", self.name, self.device, batch_sizes)

    # -- description -------------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        training = self.config.get("training", {})
        return {
            "name": self.name,
            "model_version": str(self.version),
            "weights_sha256": self.weights_sha256,
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
        label = f"torch:{self.device.type}" + ("" if kernel == "torch" else f"+solve:{kernel}")
        return label + ("+bf16" if name == "sample" and self.sample_dtype is not None else "")

"""Process set-up for serving: the device, the inference thread count, malloc tuning and the solve kernels,
all settled once at start-up so that no request pays for them.

The thread policy, for CPUs shared with other work: each instance runs on its share of the cores; the
native solve has one parallel region per call whose idle threads sleep; and `OMP_WAIT_POLICY=PASSIVE`
(set by the `python -m service` and `flowserve` entry points before torch loads, unless the environment
sets it) makes torch's OpenMP threads sleep between parallel regions instead of spinning, so a core taken
by another process costs a share of the work instead of a collapse: every torch convolution is a
parallel region whose threads otherwise wait, spinning, for the one that was descheduled."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

import kernels_cuda
from model.malloc import tune_malloc

from .settings import Settings

__all__ = ["Runtime", "prepare_kernels", "resolve_device", "resolve_threads", "set_up_process"]

log = logging.getLogger("service.runtime")


@dataclass(frozen=True)
class Runtime:
    """Where inference runs: the device and the intra-op threads of torch and onnxruntime (0: defaults)."""

    device: torch.device
    threads: int


def resolve_device(requested: str) -> torch.device:
    """`auto` → CUDA when present; `cuda` without a GPU fails loudly instead of silently using the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but no CUDA device is available")
    return torch.device(requested)


def resolve_threads(requested: int, device: torch.device, instances: int = 1) -> int:
    """Intra-op threads of each inference instance; 0 means "leave the library defaults". `requested` 0
    (auto) on a CPU device: the usable cores less one, shared among the instances, at least 1 each, so the
    event loop keeps a core for HTTP, decoding and encoding instead of contending with inference (on 2
    cores that halved the idle overhead and doubled small-request throughput: docs/performance.md). Where
    `OMP_NUM_THREADS` is set (Ray sets it per replica) or on a GPU, the defaults stay."""
    if requested or device.type != "cpu" or os.environ.get("OMP_NUM_THREADS"):
        return requested
    return max(1, (len(os.sched_getaffinity(0)) - 1) // instances)


def set_up_process(settings: Settings) -> Runtime:
    """Resolve the device and threads, apply the thread count, and keep freed memory between batches."""
    device = resolve_device(settings.device)
    tune_malloc()  # every batch frees and reallocates the same tensors: keep the memory, skip page faults
    threads = resolve_threads(settings.torch_threads, device, settings.instances)
    if threads:
        torch.set_num_threads(threads)
    return Runtime(device, threads)


def prepare_kernels(device: torch.device) -> str:
    """Build (or load the cached) solve library for the device (native CPU, or CUDA), before any model runs;
    returns the kernel backend that will serve. A failure is logged once (kernels_cuda/loader.py) and the
    torch reference serves, shown as `torch:<device>` in `/models`; it is retried at the next start-up,
    never by a request."""
    backend = kernels_cuda.prepare(device)
    log.info("triangular solves on %s run on kernel backend %r", device, backend)
    return backend

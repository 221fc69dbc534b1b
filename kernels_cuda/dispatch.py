"""One dispatch point: picks the backend for each call, at call time, from an argument or `FLOWS_KERNELS`.

`torch` is the exact reference (any device); `cuda` is the compiled kernels (CUDA tensors only);
`cuda_host` is the same kernel source run on the CPU by a host driver (CPU tensors only; for tests);
`auto` (default) uses `cuda` for CUDA tensors when the kernels are loaded, else `torch`. Dispatch never
retries a failed build (kernels_cuda/loader.py): `load_cuda_kernels()` does, explicitly.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Literal

import torch

from . import reference

__all__ = ["BACKENDS", "Backend", "cuda_kernels_available", "load_cuda_kernels", "resolve_backend", "select"]

Backend = Literal["torch", "cuda", "cuda_host", "auto"]
BACKENDS: tuple[str, ...] = ("torch", "cuda", "cuda_host", "auto")
ENV_VAR = "FLOWS_KERNELS"


def cuda_kernels_available() -> bool:
    """True when the compiled CUDA kernels can be loaded on this machine (builds them on first use)."""
    from . import cuda_backend

    return cuda_backend.available()


def load_cuda_kernels(retry: bool = True) -> bool:
    """Build (or load the cached) CUDA kernels now, retrying a remembered failure; True when usable.
    The service calls this at start-up so that no request ever waits for a compiler."""
    from . import cuda_backend

    return cuda_backend.load(retry)


def resolve_backend(tensor: torch.Tensor, backend: str | None = None) -> str:
    """The concrete backend (`torch`, `cuda` or `cuda_host`) for an op on `tensor`."""
    choice = (backend or os.environ.get(ENV_VAR) or "auto").lower()
    if choice not in BACKENDS:
        raise ValueError(f"unknown kernel backend {choice!r}; expected one of {BACKENDS} ({ENV_VAR})")
    if choice == "torch":
        return "torch"
    if choice == "cuda":
        if not tensor.is_cuda:
            raise RuntimeError(f"kernel backend 'cuda' was forced but the tensor is on {tensor.device}")
        if not cuda_kernels_available():
            raise RuntimeError("kernel backend 'cuda' was forced but the CUDA kernels are unavailable")
        return "cuda"
    if choice == "cuda_host":
        if tensor.device.type != "cpu":
            raise RuntimeError(f"kernel backend 'cuda_host' runs on CPU tensors, got {tensor.device}")
        from . import host_backend

        if not host_backend.available():
            raise RuntimeError(
                f"kernel backend 'cuda_host' is unavailable: {host_backend.unavailable_reason()}"
            )
        return "cuda_host"
    return "cuda" if tensor.is_cuda and cuda_kernels_available() else "torch"


def select(tensor: torch.Tensor, backend: str | None = None) -> ModuleType:
    """The module implementing the raw (non-autograd) ops for this call."""
    choice = resolve_backend(tensor, backend)
    if choice == "cuda":
        from . import cuda_backend

        return cuda_backend
    if choice == "cuda_host":
        from . import host_backend

        return host_backend
    return reference

"""One dispatch point: picks the backend for each call, at call time, from an argument or `FLOWS_KERNELS`.

`torch` is the exact reference (any device); `cuda` is the compiled kernels (CUDA tensors only);
`auto` (default) uses `cuda` for CUDA tensors when the kernels are built and loadable, else `torch`.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Literal

import torch

from . import reference

__all__ = ["BACKENDS", "Backend", "cuda_kernels_available", "resolve_backend", "select"]

Backend = Literal["torch", "cuda", "auto"]
BACKENDS: tuple[str, ...] = ("torch", "cuda", "auto")
ENV_VAR = "FLOWS_KERNELS"


def cuda_kernels_available() -> bool:
    """True when the compiled CUDA kernels can be loaded on this machine (builds them on first use)."""
    from . import cuda_backend

    return cuda_backend.available()


def resolve_backend(tensor: torch.Tensor, backend: str | None = None) -> str:
    """The concrete backend (`torch` or `cuda`) for an op on `tensor`."""
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
    return "cuda" if tensor.is_cuda and cuda_kernels_available() else "torch"


def select(tensor: torch.Tensor, backend: str | None = None) -> ModuleType:
    """The module implementing the raw (non-autograd) ops for this call."""
    if resolve_backend(tensor, backend) == "cuda":
        from . import cuda_backend

        return cuda_backend
    return reference

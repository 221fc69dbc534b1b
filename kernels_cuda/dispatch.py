"""One dispatch point over a registry of backends: picks the backend of each call, at call time, from an
argument or `FLOWS_KERNELS`.

`auto` (the default) takes the first registered backend that runs automatically on the tensor's device
and is usable there (its library built and loaded): the compiled CUDA kernels for CUDA tensors, the
native CPU solve for CPU tensors, else the torch reference. A named backend is used or refused with the
reason, never silently replaced. Dispatch never retries a failed build (kernels_cuda/loader.py):
`prepare()` does, explicitly, and the service calls it at start-up. A new backend is one module with
`tl_conv2d_solve` and `tl_conv2d_solve_transposed` (and a `backend = CompiledBackend(...)` if it is
compiled) plus one line in `REGISTRY`.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from types import ModuleType

import torch

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "REGISTRY",
    "Backend",
    "prepare",
    "resolve_backend",
    "select",
    "serving_backend",
]

ENV_VAR = "FLOWS_KERNELS"


@dataclass(frozen=True)
class Backend:
    """One way to run the solves: the devices it runs on (empty: any), whether `auto` picks it there, and
    the module holding its ops."""

    name: str
    devices: frozenset[str]
    automatic: bool
    module: str
    summary: str

    def ops(self) -> ModuleType:
        return importlib.import_module(f".{self.module}", __package__)

    def runs_on(self, device: torch.device) -> bool:
        return not self.devices or device.type in self.devices

    def unavailable_reason(self) -> str | None:
        """Why it cannot run here (None: usable); a compiled backend's first call builds its library."""
        compiled = getattr(self.ops(), "backend", None)
        if compiled is None or compiled.available():
            return None
        return compiled.unavailable_reason() or f"{self.name} is unavailable"

    def load(self) -> bool:
        """Build and load a compiled backend now, retrying a remembered failure; True when usable."""
        compiled = getattr(self.ops(), "backend", None)
        return compiled is None or compiled.load(retry=True)


# In order of preference for `auto`.
REGISTRY: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("cuda", frozenset({"cuda"}), True, "cuda_backend", "csrc/tl_solve.cu built with nvcc"),
        Backend("cpu", frozenset({"cpu"}), True, "cpu_backend", "csrc/cpu_solve.cpp built with g++ -O3"),
        Backend(
            "cuda_host",
            frozenset({"cpu"}),
            False,
            "host_backend",
            "the CUDA kernel's item functions run on the CPU by a g++ host driver (a test vehicle)",
        ),
        Backend("torch", frozenset(), True, "reference", "the exact PyTorch reference, any device"),
    )
}
BACKENDS: tuple[str, ...] = (*REGISTRY, "auto")


def _device(where: torch.Tensor | torch.device | str) -> torch.device:
    return where.device if isinstance(where, torch.Tensor) else torch.device(where)


def resolve_backend(where: torch.Tensor | torch.device | str, backend: str | None = None) -> str:
    """The concrete backend name for an op on this tensor (or device)."""
    device = _device(where)
    choice = (backend or os.environ.get(ENV_VAR) or "auto").lower()
    if choice == "auto":
        for spec in REGISTRY.values():
            if spec.automatic and spec.runs_on(device) and spec.unavailable_reason() is None:
                return spec.name
        return "torch"
    spec = REGISTRY.get(choice)
    if spec is None:
        raise ValueError(f"unknown kernel backend {choice!r}; expected one of {BACKENDS} ({ENV_VAR})")
    if not spec.runs_on(device):
        raise RuntimeError(
            f"kernel backend {choice!r} was forced but it runs on {'/'.join(sorted(spec.devices))} tensors, "
            f"not {device}"
        )
    reason = spec.unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"kernel backend {choice!r} was forced but is unavailable: {reason}")
    return choice


def serving_backend(device: torch.device | str) -> str:
    """The backend that serves solves on `device` now (the choice `auto` or `FLOWS_KERNELS` makes)."""
    return resolve_backend(device)


def prepare(device: torch.device | str) -> str:
    """At start-up, never in a request: build (or load the cached) libraries of the automatic backends
    for `device`, retrying earlier failures; returns the backend that will serve it."""
    device = _device(device)
    for spec in REGISTRY.values():
        if spec.automatic and spec.devices and spec.runs_on(device):
            spec.load()
    return serving_backend(device)


def select(tensor: torch.Tensor, backend: str | None = None) -> ModuleType:
    """The module implementing the raw (non-autograd) ops for this call."""
    return REGISTRY[resolve_backend(tensor, backend)].ops()

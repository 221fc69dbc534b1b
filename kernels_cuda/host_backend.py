"""Backend `cuda_host`: the CUDA kernel's own item functions, run on the CPU by a host driver (g++, ctypes).

`csrc/host_driver.cpp` schedules the items of `csrc/tl_solve_core.cuh` exactly as the GPU kernel does, phase
by phase, with each phase's items in a random order and unwritten memory poisoned with NaN; CI runs the whole
kernel test grid through it, so the kernel source is checked on every run without a GPU. It is a test
vehicle, not a fast CPU path (the torch reference is that). CPU tensors only.

`FLOWS_HOST_FAST_LIMIT` (bytes, default 227 KiB = an H100's shared memory per block) is the shared memory
to emulate: it decides, as on the GPU, whether the plane and the weights sit in "shared" memory or in the
global workspace.
"""

from __future__ import annotations

import ctypes
import itertools
import os

import torch

from .build import build_host_driver
from .folding import prepare, solve_pair
from .loader import CompiledBackend

__all__ = ["DEFAULT_FAST_LIMIT", "backend", "solve", "tl_conv2d_solve", "tl_conv2d_solve_transposed"]

DEFAULT_FAST_LIMIT = 227 * 1024
_I64 = ctypes.c_int64
_ARGS = [ctypes.c_void_p] * 3 + [_I64] * 8 + [ctypes.c_uint64, _I64, _I64]
_calls = itertools.count(1)


def _bind(lib: ctypes.CDLL) -> None:
    for name in ("flows_host_solve_f32", "flows_host_solve_f64"):
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = _ARGS, ctypes.c_int


backend = CompiledBackend("host driver of the CUDA kernels", build_host_driver, _bind)


def solve(
    rhs: torch.Tensor,
    weight: torch.Tensor,
    groups: int,
    transposed: bool,
    fast_limit: int | None = None,
    seed: int | None = None,
    threads: int = 1,
) -> torch.Tensor:
    """One solve through the host driver; `seed` picks the item order (default: a new one every call)."""
    lib = backend.library()
    if rhs.device.type != "cpu":
        raise ValueError(f"backend 'cuda_host' runs on CPU tensors, got {rhs.device}")
    p = prepare(rhs, weight, groups, transposed)
    if fast_limit is None:
        fast_limit = int(os.environ.get("FLOWS_HOST_FAST_LIMIT", DEFAULT_FAST_LIMIT))
    fn = lib.flows_host_solve_f32 if p.rhs.dtype == torch.float32 else lib.flows_host_solve_f64
    seed = next(_calls) if seed is None else seed
    return p.run(fn, "the host driver", rhs.dtype, fast_limit, seed, threads, 1)


tl_conv2d_solve, tl_conv2d_solve_transposed = solve_pair(solve, "the kernel's item functions on the CPU")

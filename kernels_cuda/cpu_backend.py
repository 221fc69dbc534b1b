"""Backend `cpu`: the native CPU solve (`csrc/cpu_solve.cpp`, g++ -O3 for this CPU, loaded with ctypes).

Per call: the size checks and cached fold of `folding.py`, one output allocation and one library call
that runs the whole solve (images in vector lanes, one parallel region over blocks of images and channel
groups; see the source's header). Threads: torch's intra-op thread count unless `FLOWS_SOLVE_THREADS`
says otherwise, so a process limited to one thread (an inference instance, a training run) solves on
one. The library is built on first use, or at the service's start-up (`kernels_cuda.prepare`).
"""

from __future__ import annotations

import ctypes
import os

import torch

from .build import build_cpu_solve
from .folding import prepare, solve_pair
from .loader import CompiledBackend

__all__ = ["backend", "lanes", "solve", "solve_threads", "tl_conv2d_solve", "tl_conv2d_solve_transposed"]

_I64 = ctypes.c_int64
_ARGS = [ctypes.c_void_p] * 3 + [_I64] * 8


def _bind(lib: ctypes.CDLL) -> None:
    for name in ("flows_cpu_solve_f32", "flows_cpu_solve_f64"):
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = _ARGS, ctypes.c_int
    lib.flows_cpu_lanes_f32.restype = ctypes.c_int
    lib.flows_cpu_abi_version.restype = ctypes.c_int
    if lib.flows_cpu_abi_version() != 1:
        raise OSError(f"CPU solve library ABI {lib.flows_cpu_abi_version()} is not the expected 1")


backend = CompiledBackend("native CPU solve", build_cpu_solve, _bind)


def lanes() -> int:
    """Images the library solves per vector (float32): 16 with AVX-512, 8 with AVX2."""
    return backend.library().flows_cpu_lanes_f32()


def solve_threads() -> int:
    """Threads one solve uses: `FLOWS_SOLVE_THREADS`, else torch's intra-op thread count."""
    env = os.environ.get("FLOWS_SOLVE_THREADS")
    return max(1, int(env)) if env else torch.get_num_threads()


def solve(
    rhs: torch.Tensor, weight: torch.Tensor, groups: int, transposed: bool, threads: int | None = None
) -> torch.Tensor:
    """One solve (`transposed`: `A⁻ᵀ`) of a CPU tensor, float32 or float64 arithmetic."""
    if rhs.device.type != "cpu":
        raise ValueError(f"backend 'cpu' runs on CPU tensors, got {rhs.device}")
    lib = backend.library()
    p = prepare(rhs, weight, groups, transposed)
    fn = lib.flows_cpu_solve_f32 if p.rhs.dtype == torch.float32 else lib.flows_cpu_solve_f64
    return p.run(fn, "the CPU solve", rhs.dtype, threads or solve_threads())


tl_conv2d_solve, tl_conv2d_solve_transposed = solve_pair(solve, "the native CPU solve")

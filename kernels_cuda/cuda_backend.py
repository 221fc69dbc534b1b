"""The compiled CUDA kernels behind the same op names as `reference`, loaded with ctypes.

Per call: size checks, the cached fold (folding.py), one allocation (output, plus a workspace when the plane
does not fit in shared memory) and one kernel launch. The library is built with nvcc (kernels_cuda/build.py)
on the first attempt, which the service makes at start-up (`load(retry=True)`); a failure is logged once
and the torch reference runs (loader.py states the retry policy).
"""

from __future__ import annotations

import ctypes
import functools

import torch

from .build import build_kernels
from .folding import Problem, prepare
from .loader import CompiledBackend

__all__ = ["KernelError", "backend", "tl_conv2d_solve", "tl_conv2d_solve_transposed"]

_I64 = ctypes.c_int64
_SOLVE_ARGS = [ctypes.c_void_p] * 4 + [_I64] * 8 + [ctypes.c_void_p]


class KernelError(RuntimeError):
    """A CUDA error reported by one of our kernels."""


def _precondition() -> str | None:
    return None if torch.cuda.is_available() else "no CUDA device"


def _bind(lib: ctypes.CDLL) -> None:
    for name in ("flows_tl_solve_f32", "flows_tl_solve_f64"):
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = _SOLVE_ARGS, ctypes.c_int
    lib.flows_tl_workspace_elems.argtypes, lib.flows_tl_workspace_elems.restype = [_I64] * 8, _I64
    lib.flows_error_string.argtypes, lib.flows_error_string.restype = [ctypes.c_int], ctypes.c_char_p
    lib.flows_abi_version.restype = ctypes.c_int
    if lib.flows_abi_version() != 2:
        raise OSError(f"kernel library ABI {lib.flows_abi_version()} is not the expected 2 (stale build?)")


backend = CompiledBackend("CUDA kernels", build_kernels, _bind, _precondition)


@functools.lru_cache(maxsize=256)
def _workspace_elems(args: tuple[int, ...], elem_bytes: int, device: int) -> int:
    """Global workspace a call needs (0 when the plane fits in shared memory); per shape and device."""
    lib = backend.library()
    batch, groups, cg, h, w, k, _ = args
    with torch.cuda.device(device):
        return lib.flows_tl_workspace_elems(batch, groups, cg, h, w, k, elem_bytes, -1)


def _launch(p: Problem) -> torch.Tensor:
    try:
        lib = backend.library()
    except RuntimeError as exc:
        raise KernelError(str(exc)) from None
    rhs = p.rhs
    if not rhs.is_cuda:
        raise ValueError("the CUDA kernels need CUDA tensors")
    n = rhs.numel()
    extra = _workspace_elems(p.args(), rhs.element_size(), rhs.device.index or 0)
    storage = torch.empty(n + extra, dtype=rhs.dtype, device=rhs.device)  # the call's only allocation
    out = storage[:n].view(rhs.shape)
    workspace = storage[n:].data_ptr() if extra else None
    fn = lib.flows_tl_solve_f32 if rhs.dtype == torch.float32 else lib.flows_tl_solve_f64
    stream = torch.cuda.current_stream(rhs.device).cuda_stream
    with torch.cuda.device(rhs.device):
        code = fn(rhs.data_ptr(), p.folded.data_ptr(), out.data_ptr(), workspace, *p.args(), -1, stream)
    if code != 0:
        raise KernelError(f"tl_solve failed: {lib.flows_error_string(code).decode()} (code {code})")
    return out


def _solve(rhs: torch.Tensor, weight: torch.Tensor, groups: int, transposed: bool) -> torch.Tensor:
    out = _launch(prepare(rhs, weight, groups, transposed))
    return out if out.dtype == rhs.dtype else out.to(rhs.dtype)


def tl_conv2d_solve(y: torch.Tensor, weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """`A⁻¹ y` in one kernel launch."""
    return _solve(y, weight, groups, transposed=False)


def tl_conv2d_solve_transposed(g: torch.Tensor, weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """`A⁻ᵀ g`: the same kernel in the frame flipped in H and W, with the transposed fold."""
    return _solve(g, weight, groups, transposed=True)

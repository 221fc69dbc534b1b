"""The compiled CUDA kernels behind the same op names as `reference`, loaded with ctypes.

The library is built with nvcc on first use (kernels_cuda/build.py) and cached. When there is no GPU,
no nvcc, or the build fails, `available()` is False, one log line says why, and the torch reference runs.
"""

from __future__ import annotations

import ctypes
import functools
import logging

import torch

from .build import CompileError, build_kernels
from .reference import check_shapes, fold_centre, transpose_groups

__all__ = ["KernelError", "available", "tl_conv2d_solve", "tl_conv2d_solve_transposed", "unavailable_reason"]

log = logging.getLogger("kernels_cuda")
MAX_KERNEL = 11
_SIGNATURE = [ctypes.c_void_p] * 3 + [ctypes.c_int] * 7 + [ctypes.c_void_p]


class KernelError(RuntimeError):
    """A CUDA error reported by one of our kernels."""


@functools.cache
def _library() -> tuple[ctypes.CDLL | None, str | None]:
    if not torch.cuda.is_available():
        return None, "no CUDA device"
    try:
        path = build_kernels()
        lib = ctypes.CDLL(str(path))
    except (CompileError, OSError) as exc:
        reason = f"CUDA kernels unavailable, using the torch fallback: {exc}"
        log.warning(reason)
        return None, reason
    for name in ("flows_tl_solve_f32", "flows_tl_solve_f64"):
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = _SIGNATURE, ctypes.c_int
    lib.flows_error_string.argtypes, lib.flows_error_string.restype = [ctypes.c_int], ctypes.c_char_p
    log.info("CUDA kernels loaded from %s", path)
    return lib, None


def available() -> bool:
    """True when a CUDA device is present and the kernel library is built and loaded."""
    return _library()[0] is not None


def unavailable_reason() -> str | None:
    return _library()[1]


def _solve(rhs: torch.Tensor, weight: torch.Tensor, groups: int, lower: bool, reverse: bool) -> torch.Tensor:
    lib = _library()[0]
    if lib is None:
        raise KernelError(unavailable_reason() or "CUDA kernels unavailable")
    cg, k = check_shapes(rhs, weight, groups)
    if not rhs.is_cuda or rhs.device != weight.device:
        raise ValueError("the CUDA kernels need the input and weight on the same CUDA device")
    if rhs.dtype not in (torch.float32, torch.float64) or weight.dtype != rhs.dtype:
        raise TypeError(f"the CUDA kernels support float32 and float64, got {rhs.dtype} / {weight.dtype}")
    if k > MAX_KERNEL:
        raise ValueError(f"kernel size {k} exceeds the CUDA kernels' maximum of {MAX_KERNEL}")
    b, c, h, w = rhs.shape
    d_inv, folded = fold_centre(weight, groups, lower)
    rhs = torch.einsum("gij,bgjhw->bgihw", d_inv, rhs.reshape(b, groups, cg, h, w)).reshape(b, c, h, w)
    rhs, folded = rhs.contiguous(), folded.contiguous()
    out = torch.empty_like(rhs)
    fn = lib.flows_tl_solve_f32 if rhs.dtype == torch.float32 else lib.flows_tl_solve_f64
    stream = torch.cuda.current_stream(rhs.device).cuda_stream
    with torch.cuda.device(rhs.device):
        code = fn(
            rhs.data_ptr(), folded.data_ptr(), out.data_ptr(), b, groups, cg, h, w, k, int(reverse), stream
        )
    if code != 0:
        raise KernelError(f"tl_solve failed: {lib.flows_error_string(code).decode()} (code {code})")
    return out


def tl_conv2d_solve(y: torch.Tensor, weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """`A⁻¹ y` in one kernel launch (plus two small folding ops)."""
    return _solve(y, weight, groups, lower=True, reverse=False)


def tl_conv2d_solve_transposed(g: torch.Tensor, weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """`A⁻ᵀ g`: the same kernel in the frame flipped in H and W, with per-group transposed weights."""
    return _solve(g, transpose_groups(weight, groups), groups, lower=False, reverse=True)

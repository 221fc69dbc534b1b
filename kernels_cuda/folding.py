"""What the compiled solve kernels take: folded weights (cached per weight version) and validated sizes.

The kernels read one tensor per (weight, direction): `(G, k·k, Cg_in, Cg_out)` with tap `a·k + b` holding
`M = D⁻¹W` and the centre slot holding `(D⁻¹)ᵀ` (docs/math.md §2, kernels_cuda/csrc/tl_solve_core.cuh).
Folding costs a dozen small torch ops, so it is done once per weight *version*: the cache is keyed by the
tensor's identity and checked against its `_version` counter and data pointer, which every in-place op
changes. Only weights that do not require grad are cached (frozen inference weights, see
`TriangularKernel.freeze`); writes through `.data` bypass version counters: call `folded_weights.clear()`
after such a write. Half and bfloat16 inputs are computed in float32.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .reference import check_shapes, fold_centre, transpose_groups

__all__ = [
    "MAX_INDEX",
    "FoldCache",
    "Problem",
    "compute_dtype",
    "fold_for_kernel",
    "folded_weights",
    "prepare",
    "solve_pair",
]

MAX_INDEX = 2**31 - 1  # the kernels index a block's plane and the grid with 32-bit ints


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; float32, float16 and bfloat16 are computed in float32 (FMAs, no TF32)."""
    if dtype == torch.float64:
        return torch.float64
    if dtype in (torch.float32, torch.float16, torch.bfloat16):
        return torch.float32
    raise TypeError(f"the solve kernels need a floating-point input, got {dtype}")


def fold_for_kernel(weight: torch.Tensor, groups: int, transposed: bool, dtype: torch.dtype) -> torch.Tensor:
    """`(G, k·k, Cg_in, Cg_out)`: `D⁻¹W` per off-centre tap, `(D⁻¹)ᵀ` in the centre slot; folded in float64.

    `transposed` folds the weight of `Aᵀ` in the flipped frame (per-group transposed, upper centre).
    """
    w = weight.detach().to(torch.float64)
    if transposed:
        w = transpose_groups(w, groups)
    d_inv, m = fold_centre(w, groups, lower=not transposed)
    g, cg, k = groups, w.shape[1], w.shape[-1]
    taps = m.permute(0, 3, 4, 2, 1).reshape(g, k * k, cg, cg).clone()  # (g, a·k+b, c_in, c_out)
    taps[:, k * k - 1] = d_inv.transpose(1, 2)
    return taps.to(dtype).contiguous()


@dataclass
class _Entry:
    ref: weakref.ref
    version: int
    data_ptr: int
    folded: torch.Tensor


class FoldCache:
    """A small LRU of folded weights; an entry is valid while its tensor is alive and unmodified."""

    def __init__(self, size: int = 64):
        self.size = size
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, weight: torch.Tensor, groups: int, transposed: bool, dtype: torch.dtype) -> torch.Tensor:
        if weight.requires_grad or weight.is_inference():
            # A trainable weight changes every step (and gradcheck perturbs it through `.data`, which no
            # version counter sees); inference-mode tensors have no version counter: fold, don't cache.
            return fold_for_kernel(weight, groups, transposed, dtype)
        version = weight._version
        key = (id(weight), groups, transposed, dtype)
        with self._lock:
            entry = self._entries.get(key)
            if (
                entry is not None
                and entry.ref() is weight
                and entry.version == version
                and entry.data_ptr == weight.data_ptr()
            ):
                self._entries.move_to_end(key)
                self.hits += 1
                return entry.folded
            self.misses += 1
        folded = fold_for_kernel(weight, groups, transposed, dtype)
        with self._lock:
            self._entries[key] = _Entry(weakref.ref(weight), version, weight.data_ptr(), folded)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return folded

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


folded_weights = FoldCache()


@dataclass(frozen=True)
class Problem:
    """One solve call, ready for a kernel: contiguous input in the compute dtype, folded weights, sizes."""

    rhs: torch.Tensor
    folded: torch.Tensor
    batch: int
    groups: int
    cg: int
    h: int
    w: int
    k: int
    reverse: int

    def args(self) -> tuple[int, ...]:
        return (self.batch, self.groups, self.cg, self.h, self.w, self.k, self.reverse)

    def run(self, fn: Callable[..., int], what: str, dtype: torch.dtype, *extra: int) -> torch.Tensor:
        """Call a compiled solve `fn(rhs, folded, out, sizes..., *extra)` and return `out` in `dtype`; a
        non-zero code is a ValueError naming `what` refused which sizes."""
        out = torch.empty_like(self.rhs)
        code = fn(self.rhs.data_ptr(), self.folded.data_ptr(), out.data_ptr(), *self.args(), *extra)
        if code != 0:
            raise ValueError(
                f"{what} refused the sizes {tuple(self.rhs.shape)}, k={self.k}, groups={self.groups}"
            )
        return out if out.dtype == dtype else out.to(dtype)


SolvePair = tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]


def solve_pair(solve: Callable[..., torch.Tensor], by: str) -> SolvePair:
    """A backend's `tl_conv2d_solve` and `tl_conv2d_solve_transposed` from its `solve(rhs, weight, groups,
    transposed)`, `by` saying what computes them (in their docstrings)."""

    def tl_conv2d_solve(y: torch.Tensor, weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
        return solve(y, weight, groups, transposed=False)

    def tl_conv2d_solve_transposed(g: torch.Tensor, weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
        return solve(g, weight, groups, transposed=True)

    tl_conv2d_solve.__doc__ = f"`A⁻¹ y` by {by}."
    tl_conv2d_solve_transposed.__doc__ = f"`A⁻ᵀ g` by {by} (the flipped frame, the transposed fold)."
    return tl_conv2d_solve, tl_conv2d_solve_transposed


def prepare(rhs: torch.Tensor, weight: torch.Tensor, groups: int, transposed: bool) -> Problem:
    """Validate shapes and sizes (clear errors here, never a wrapped integer in C) and fetch the fold."""
    cg, k = check_shapes(rhs, weight, groups)
    if rhs.device != weight.device:
        raise ValueError(f"input on {rhs.device} but weight on {weight.device}")
    if not weight.is_floating_point():
        raise TypeError(f"the solve kernels need a floating-point weight, got {weight.dtype}")
    b, _, h, w = rhs.shape
    if b * groups > MAX_INDEX:
        raise ValueError(f"batch × groups = {b * groups} exceeds the kernels' grid limit of {MAX_INDEX}")
    if (h + k - 1) * (w + k - 1) * cg > MAX_INDEX or k * k * cg * cg > MAX_INDEX:
        raise ValueError(f"a {cg}×{h}×{w} plane with k={k} exceeds the kernels' 32-bit per-image indexing")
    dtype = compute_dtype(rhs.dtype)
    folded = folded_weights.get(weight, groups, transposed, dtype)
    return Problem(rhs.to(dtype).contiguous(), folded, b, groups, cg, h, w, k, int(transposed))

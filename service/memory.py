"""Memory a released model version held, handed back: to the OS on a CPU, to the device on a GPU.

A released version's tensors are freed by reference counting the moment its last reference goes, but the
memory stays with the process: glibc keeps freed heap memory for reuse (the more so as `model.malloc`
tunes it to keep up to 1 GiB), and PyTorch's CUDA allocator keeps freed blocks cached.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import platform

import torch

__all__ = ["release_freed_memory"]


def _malloc_trim() -> bool:
    """glibc's `malloc_trim(0)`: free pages at the top of every arena and in their middles go back to the
    OS; False where the C library is not glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    return bool(libc.malloc_trim(0))


def release_freed_memory() -> None:
    """Collect reference cycles, then return freed memory (call it off the event loop: a few ms)."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    _malloc_trim()

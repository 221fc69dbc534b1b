"""Keep freed tensor memory in the process (glibc malloc settings; Linux only, a no-op elsewhere).

By default glibc serves large allocations with `mmap` and hands freed memory at the top of the heap back to
the OS, so a process that allocates and frees the same big tensors on every batch gets fresh zeroed pages
each time. On our 2-core CPU a 64-image FInC sample took ~75k page faults and 307 ms; with allocations up
to 32 MiB served from the heap and freed memory kept (up to 1 GiB), 0 faults and 175 ms
(`benchmarks/malloc_ab.py`). Serving stacks get the same from jemalloc or tcmalloc; this needs no preload.
The cost: the process keeps its peak heap instead of shrinking between batches.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

__all__ = ["tune_malloc"]

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
_MMAP_THRESHOLD = 32 * 2**20  # glibc's maximum on 64-bit; larger blocks are still mapped
_TRIM_THRESHOLD = 2**30
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def tune_malloc() -> bool:
    """Apply the settings above once per process; False where they do not apply: not glibc, the user set
    glibc's own `MALLOC_*` variables, or `FLOWS_TUNE_MALLOC=0` (glibc's defaults, for comparisons)."""
    if os.environ.get("FLOWS_TUNE_MALLOC", "1") == "0" or any(v in os.environ for v in _USER_SETTINGS):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )
    if not ok:
        log.warning("mallopt refused the malloc settings; glibc's defaults stay")
    return ok

"""The CPU's feature flags as Linux reports them: which vector units the native CPU solve is built for."""

from __future__ import annotations

import functools
from pathlib import Path

__all__ = ["cpu_flags"]


@functools.cache
def cpu_flags() -> frozenset[str]:
    """Flags of `/proc/cpuinfo` (x86 "flags", Arm "Features"); empty where there is no such file."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()

"""Load a compiled kernel library once, with an explicit retry policy for failures.

The first `get()` builds (or finds in the cache) and loads the library. A failure is logged once and
remembered: later `get()` calls (every op dispatch) return None at once and never rebuild, so no request
pays for a compiler run. Only `load(retry=True)` tries again (the service calls it at start-up).
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = ["CompiledBackend", "LibraryLoader"]

log = logging.getLogger("kernels_cuda")


class LibraryLoader:
    """`precondition()` returns why the library cannot be used here (or None); `build()` returns its path
    (raising on failure); `bind(lib)` declares the ctypes signatures."""

    def __init__(
        self,
        name: str,
        build: Callable[[], Path],
        bind: Callable[[ctypes.CDLL], None],
        precondition: Callable[[], str | None] = lambda: None,
    ):
        self.name, self._build, self._bind, self._precondition = name, build, bind, precondition
        self._lib: ctypes.CDLL | None = None
        self._reason: str | None = None
        self._attempted = False
        self._lock = threading.Lock()
        self.attempts = 0

    def get(self) -> ctypes.CDLL | None:
        """The loaded library, or None (after the first attempt, without retrying)."""
        if self._attempted:
            return self._lib
        return self.load(retry=False)

    def load(self, retry: bool = True) -> ctypes.CDLL | None:
        """Build and load now; with `retry`, a remembered failure is attempted again."""
        with self._lock:
            if self._lib is not None or (self._attempted and not retry):
                return self._lib
            self.attempts += 1
            reason = self._precondition()
            if reason is None:
                try:
                    path = self._build()
                    lib = ctypes.CDLL(str(path))
                    self._bind(lib)
                except (RuntimeError, OSError, AttributeError) as exc:
                    reason = f"{self.name} unavailable, using the torch reference: {exc}"
                    log.warning(reason)
                else:
                    self._lib = lib
                    log.info("%s loaded from %s", self.name, path)
            self._reason, self._attempted = reason, True
            return self._lib

    @property
    def loaded(self) -> bool:
        """True when the library is loaded (never triggers an attempt)."""
        return self._lib is not None

    @property
    def reason(self) -> str | None:
        """Why the library is not loaded (None when it is, or before the first attempt)."""
        return self._reason


class CompiledBackend:
    """A solve backend whose ops live in a compiled library: the availability questions every such
    backend answers, over one `LibraryLoader`."""

    def __init__(self, *args, **kwargs):
        """`LibraryLoader`'s arguments: the name, build, bind and precondition of the library."""
        self.loader = LibraryLoader(*args, **kwargs)
        self.name = self.loader.name

    def available(self) -> bool:
        """True when the library is loaded (the first call builds or finds it)."""
        return self.loader.get() is not None

    def loaded(self) -> bool:
        """True when the library is loaded; unlike `available()`, never starts a build."""
        return self.loader.loaded

    def load(self, retry: bool = True) -> bool:
        """Build (or find in the cache) and load now, retrying a remembered failure; True when usable."""
        return self.loader.load(retry) is not None

    def unavailable_reason(self) -> str | None:
        return self.loader.reason

    def library(self) -> ctypes.CDLL:
        """The loaded library; RuntimeError with the reason when it cannot be used."""
        lib = self.loader.get()
        if lib is None:
            raise RuntimeError(self.loader.reason or f"{self.name} unavailable")
        return lib

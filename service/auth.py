"""The API key: which paths it guards and how a request presents it (`X-API-Key: KEY` or `Authorization:
Bearer KEY`). Checked once, by the request middleware, before the body is read."""

from __future__ import annotations

import secrets

__all__ = ["OPEN_PATHS", "OPEN_PREFIXES", "guarded", "presented_key", "valid_key"]

# Without the key a server shows whether it is alive and ready, and the playground's static page (which
# holds no data), nothing else: model names, metrics and the API description all need the key.
OPEN_PATHS = frozenset({"/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready", "/"})
OPEN_PREFIXES = ("/static/",)


def guarded(path: str) -> bool:
    """Whether `path` needs the key (when the server has one)."""
    return path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES)


def presented_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The key a request presents, from `X-API-Key` or a bearer `Authorization`; None if neither."""
    for name, value in headers:
        key = name.lower()
        if key == b"x-api-key":
            return value.decode("latin1")
        if key == b"authorization":
            scheme, _, token = value.decode("latin1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def valid_key(presented: str | None, expected: str) -> bool:
    """Constant-time comparison; a missing key is never valid."""
    return presented is not None and secrets.compare_digest(presented.encode(), expected.encode())

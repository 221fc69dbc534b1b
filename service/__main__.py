"""`python -m service [--host H] [--port P] [--models DIR] [--device auto|cpu|cuda] ...`.

Every option is also an environment variable `FLOWS_<NAME>` (command line wins). SIGTERM/SIGINT flip
readiness off at once, stop accepting connections, finish queued work, then exit.
"""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn
from pydantic import ValidationError

from .app import create_app
from .settings import Settings

_OPTIONS = {
    "host": str,
    "port": int,
    "models": str,
    "default_model": str,
    "device": str,
    "backend": str,
    "max_batch_images": int,
    "max_wait_ms": float,
    "inline_max_ms": float,
    "max_queue_images": int,
    "overload_status": int,
    "request_timeout_s": float,
    "max_samples_per_request": int,
    "max_images_per_request": int,
    "max_body_bytes": int,
    "api_key": str,
    "torch_threads": int,
    "log_level": str,
}


class _Server(uvicorn.Server):
    """Marks the app not ready the moment a shutdown signal arrives, before connections close."""

    def __init__(self, config: uvicorn.Config, app):
        super().__init__(config)
        self.flows_app = app

    def handle_exit(self, sig, frame) -> None:
        self.flows_app.state.flows.ready = False
        super().handle_exit(sig, frame)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__.splitlines()[0])
    for name, kind in _OPTIONS.items():
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=None)
    parser.add_argument("--no-warmup", action="store_true")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k in _OPTIONS and v is not None}
    if args.no_warmup:
        overrides["warmup"] = False
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,  # our middleware logs one structured line per request
        # uvicorn[standard]: uvloop and httptools when installed ("auto"), the pure-Python ones otherwise
        loop="auto",
        http="auto",
        timeout_graceful_shutdown=max(5, int(settings.request_timeout_s) + 5),
    )
    _Server(config, app).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

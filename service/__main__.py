"""`python -m service [--host H] [--port P] [--models DIR] [--device auto|cpu|cuda] ...`.

The options are the fields of `service.settings.Settings`, with their descriptions as help; each is also an
environment variable `FLOWS_<NAME>` (the command line wins). SIGTERM/SIGINT flip readiness off at once,
stop accepting connections, finish queued work, then exit.
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning, so that a core taken by
# another process slows inference by its share instead of collapsing it (service/runtime.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import logging
import sys
import types
import typing
from typing import Any, Literal

import uvicorn
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from .app import create_app
from .protocol import protocol_class
from .settings import Settings

__all__ = ["DESCRIPTION", "build_parser", "main"]

DESCRIPTION = "Serve the flows over HTTP: sampling, exact log-likelihoods, the latent space, a playground."


class _Server(uvicorn.Server):
    """Marks the app not ready the moment a shutdown signal arrives, before connections close."""

    def __init__(self, config: uvicorn.Config, app):
        super().__init__(config)
        self.flows_app = app

    def handle_exit(self, sig, frame) -> None:
        self.flows_app.state.flows.ready = False
        super().handle_exit(sig, frame)


def _value_type(annotation: Any) -> tuple[Any, list | None]:
    """The type an option's text converts to, and its choices, from a field's annotation."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        values = list(typing.get_args(annotation))
        return type(values[0]), values
    if origin in (typing.Union, types.UnionType):  # `X | None`: the option takes an X
        (inner,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _value_type(inner)
    return annotation, None


def _add_option(parser: argparse.ArgumentParser, name: str, field: FieldInfo) -> None:
    flag = "--" + name.replace("_", "-")
    default = field.get_default(call_default_factory=True)
    shown = "unset" if default is None else default
    help_text = f"{field.description} (default: {shown}; env FLOWS_{name.upper()})".replace("%", "%%")
    if field.annotation is bool:
        parser.add_argument(
            flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text
        )
        return
    kind, choices = _value_type(field.annotation)
    metavar = None if choices else name.upper()
    parser.add_argument(
        flag, dest=name, type=kind, choices=choices, default=None, metavar=metavar, help=help_text
    )


def build_parser() -> argparse.ArgumentParser:
    """One option per `Settings` field; unset options leave the environment variable or default in force."""
    parser = argparse.ArgumentParser(prog="python -m service", description=DESCRIPTION)
    for name, field in Settings.model_fields.items():
        _add_option(parser, name, field)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {name: value for name, value in vars(args).items() if value is not None}
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
        # uvicorn[standard]: uvloop and httptools when installed ("auto"), the pure-Python ones otherwise;
        # either with a deadline for the request head (service/protocol.py)
        loop="auto",
        http=protocol_class(settings.header_timeout_s),
        timeout_keep_alive=settings.keep_alive_s,
        limit_concurrency=settings.max_connections,
        timeout_graceful_shutdown=max(5, int(settings.request_timeout_s) + 5),
    )
    _Server(config, app).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`flowserve COMMAND [ARGS...]`: one command for every entry point of the project (the console script
that `pyproject.toml` declares). Each command runs the `main` of its `python -m` module with the remaining
arguments, so `flowserve train --arch finc ...` is `python -m model.train --arch finc ...`."""

from __future__ import annotations

import importlib
import sys

__all__ = ["COMMANDS", "main"]

# command -> (module whose `main(argv)` it runs, what it does)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("service.__main__", "start the HTTP service on the shipped (or given) models"),
    "client": ("service.client", "call a running service: sample, logprob, encode, decode, interpolate"),
    "train": ("model.train", "train a flow and write a checkpoint"),
    "evaluate": ("model.evaluate", "test bits/dim and throughput of a checkpoint"),
    "export": ("model.export", "export a checkpoint's convolution-only passes to ONNX"),
    "card": ("model.card", "write a checkpoint's model card (README.md)"),
    "ood": ("model.ood", "compute a checkpoint's out-of-distribution reference statistics (ood_stats.json)"),
    "ray": ("service.ray_serve", "start a Ray node (head deploys the service with Ray Serve; needs .[ray])"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        f"  {name:<{width}}  {what} (python -m {module.removesuffix('.__main__')})"
        for name, (module, what) in COMMANDS.items()
    ]
    return (
        "usage: flowserve COMMAND [ARGS...]  (flowserve COMMAND --help for its options)\n\ncommands:\n"
        + "\n".join(lines)
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"flowserve: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return module.main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())

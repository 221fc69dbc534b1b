"""Ray Serve deployment of the same app: `serve run deploy/ray/serve_config.yaml` (needs the `.[ray]` extra).

Each replica builds the FastAPI app with `create_app(settings)` unchanged: it loads the models, warms up
and runs its own batcher, so batching, limits, errors and metrics are those of `python -m service`. Serve
adds what one process cannot: replicas across a cluster, GPU placement, autoscaling and restarts. A replica
is healthy only while its app is ready (models loaded and warmed up, not draining).

`python -m service.ray_serve head|worker` starts a Ray node of a cluster (the Docker image's Ray switch).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve import Application
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .app import create_app
from .errors import ReplicaNotReady, ReplicaUnavailable, send_error
from .settings import Settings
from .state import require_ready

__all__ = [
    "PROXY_CALLBACK",
    "FlowService",
    "ReplicaLostAs503",
    "ReplicaNotReady",
    "build_app",
    "main",
    "proxy_middlewares",
    "settings_from_args",
]

log = logging.getLogger("service.ray_serve")

# Serve's defaults suit small RPCs, not a batching server: at most 5 requests in flight per replica would
# cap a batch at 5 requests. Let the replica's own bounded queue decide (503 when full), as in the plain
# server; requests beyond `max_queued_requests` waiting for a free replica get Serve's own 503.
_DEFAULT_OPTIONS: dict[str, Any] = {
    "max_ongoing_requests": 256,
    "max_queued_requests": 1024,
    "health_check_period_s": 10.0,
    "health_check_timeout_s": 30.0,
    "graceful_shutdown_timeout_s": 40.0,
    "ray_actor_options": {"num_cpus": 1},
    # The app already logs one JSON line per request; Serve's own access line per request costs ~1 ms more.
    "logging_config": {"enable_access_log": False},
}
# Serve reads this variable in each HTTP proxy (set it on every node before `ray start`).
PROXY_CALLBACK = ("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", "service.ray_serve.proxy_middlewares")
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "ray" / "serve_config.yaml"


class _ReplicaHeaders:
    """Adds `X-Serve-Replica` (which replica answered); drops the app's `X-Request-ID`, which Serve's proxy
    adds itself with the same value (the app takes the id the proxy put on the request)."""

    def __init__(self, app: ASGIApp, replica: str):
        self.app, self.replica = app, (b"x-serve-replica", replica.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message["headers"] = [*kept, self.replica]
            await send(message)

        await self.app(scope, receive, send_with_headers if scope["type"] == "http" else send)


@serve.deployment(name="flows", **_DEFAULT_OPTIONS)
@serve.ingress()
class FlowService:
    """One replica: the service app built on the replica from `settings` (a dict of `Settings` fields)."""

    def __init__(self, settings: dict[str, Any] | None = None):
        self._settings = Settings(**(settings or {}))
        self._app: FastAPI | None = None

    def __serve_build_asgi_app__(self) -> FastAPI:
        # Serve runs the app's lifespan (load, warm up) before the replica takes traffic.
        self._app = create_app(self._settings)
        self._app.add_middleware(_ReplicaHeaders, replica=serve.get_replica_context().replica_tag)
        return self._app

    def check_health(self) -> None:
        """Serve's health check: `ReplicaNotReady` while the app is loading, warming up or draining."""
        require_ready(self._app.state.flows if self._app is not None else None, ReplicaNotReady)


class ReplicaLostAs503:
    """In Serve's HTTP proxy: a request that got no response at all (its replica died mid-request) is
    answered 503 with `Retry-After` in the service's error format, instead of a bare 500. Sampling and
    scoring are pure functions of the request, so a client that retries on 503 loses nothing."""

    def __init__(self, app: ASGIApp, retry_after_s: int = 1):
        self.app, self.retry_after_s = app, retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            if started:
                raise
            log.warning("request lost with its replica; answered 503", exc_info=True)
        if started:
            return
        request_id = dict(scope.get("headers", [])).get(b"x-request-id", b"").decode("latin1")
        error = ReplicaUnavailable("the replica serving this request stopped; retry", self.retry_after_s)
        await send_error(send, error, request_id, {"x-request-id": request_id})


def proxy_middlewares() -> list[Middleware]:
    """Serve's proxy callback (`RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`): the proxy's middlewares."""
    return [Middleware(ReplicaLostAs503)]


def settings_from_args(args: dict[str, Any]) -> dict[str, Any]:
    """Validate `args` as `Settings` now (fail fast where the app is deployed), as plain JSON values."""
    return Settings(**args).model_dump(mode="json", exclude={"host", "port"})


def build_app(args: dict[str, Any]) -> Application:
    """Serve's application builder: `args` are `Settings` fields (`models`, `device`, `max_batch_images`)."""
    return FlowService.bind(settings_from_args(args))


def main(argv: list[str] | None = None) -> int:
    """Start this machine as a Ray head (and deploy the service) or as a Ray worker; blocks."""
    p = argparse.ArgumentParser(prog="python -m service.ray_serve", description=main.__doc__)
    p.add_argument("role", choices=["head", "worker"])
    p.add_argument("--address", default=os.environ.get("RAY_HEAD_ADDRESS", "ray-head:6379"), help="worker")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="head: the Serve config to deploy")
    p.add_argument("--ray-port", type=int, default=6379, help="head: the GCS port workers join")
    args = p.parse_args(argv)
    env = {**os.environ, PROXY_CALLBACK[0]: PROXY_CALLBACK[1], "RAY_USAGE_STATS_ENABLED": "0"}
    bin_dir = Path(sys.executable).parent
    ray_cli, serve_cli = str(bin_dir / "ray"), str(bin_dir / "serve")
    if args.role == "worker":
        return subprocess.call([ray_cli, "start", "--address", args.address, "--block"], env=env)
    head = [ray_cli, "start", "--head", "--port", str(args.ray_port), "--dashboard-host", "0.0.0.0"]
    subprocess.run(head, env=env, check=True)
    # `serve run` deploys the config and stays in the foreground; it shuts Serve down on SIGINT/SIGTERM.
    os.execve(serve_cli, [serve_cli, "run", args.config], env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())

"""Servers for the HTTP tests: the app in-process (TestClient, lifespan included) and a real uvicorn."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "checkpoints"
SHIPPED = sorted(p.name for p in MODELS.iterdir() if (p / "config.json").is_file()) if MODELS.is_dir() else []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RealServer:
    """`python -m service` in a subprocess on 127.0.0.1, stopped with SIGTERM. One torch thread unless
    `args` say otherwise: tests run several processes at once, and on a small CPU more threads only contend
    (results do not depend on it)."""

    def __init__(self, *args: str, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "service", "--port", str(self.port), "--models", str(MODELS)]
        cmd += [*args] if "--torch-threads" in args else ["--torch-threads", "1", *args]
        self.log = open(ROOT / f".pytest-server-{self.port}.log", "w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )

    def wait_ready(self, timeout: float = 120) -> RealServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/health/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.output()}")

    def __enter__(self) -> RealServer:
        return self.wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> int:
        """SIGTERM, then the exit status (uvicorn re-raises the signal after a graceful shutdown: -15)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.final_output = self.output()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)
        return self.proc.returncode


@pytest.fixture(scope="session")
def inprocess() -> Iterator[TestClient]:
    settings = Settings(models=MODELS, max_batch_images=16, max_wait_ms=5, max_body_bytes=2**20)
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="session")
def real_server() -> Iterator[RealServer]:
    server = RealServer("--max-batch-images", "16", "--max-wait-ms", "10", "--max-body-bytes", str(2**20))
    server.wait_ready()
    yield server
    assert server.stop() in (0, -signal.SIGTERM)
    assert "drained and stopped" in server.final_output


@pytest.fixture(scope="session")
def real(real_server: RealServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=real_server.url, timeout=60) as client:
        yield client


@pytest.fixture(params=["inprocess", "uvicorn"])
def client(request) -> httpx.Client:
    """Each API test runs twice: in-process through the ASGI app, and over TCP against uvicorn."""
    return request.getfixturevalue("inprocess" if request.param == "inprocess" else "real")

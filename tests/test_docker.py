"""The CPU Docker image, built and started with compose, answers real requests (scripts/docker_test.sh)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OFFLINE_DOCKER = ROOT.parent / "shared" / "tools" / "offline-docker.sh"


def _docker_usable() -> bool:
    if shutil.which("docker") is None:
        return False
    engine = subprocess.run(["docker", "info"], capture_output=True).returncode == 0
    return engine or (OFFLINE_DOCKER.is_file() and os.geteuid() == 0)


@pytest.mark.slow
@pytest.mark.skipif(not _docker_usable(), reason="no Docker engine (and no way to start one here)")
def test_cpu_image_serves_sample_and_logprob_under_compose():
    result = subprocess.run(
        ["bash", "scripts/docker_test.sh"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "PYTHON": sys.executable},
    )
    print(result.stdout[-4000:])
    if result.returncode == 3:
        pytest.skip("no Docker engine could be started: " + result.stderr[-500:])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "docker_smoke: ok" in result.stdout


def _compose_available() -> bool:
    return (
        shutil.which("docker") is not None
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    )


@pytest.mark.skipif(not _compose_available(), reason="docker compose is not installed")
def test_compose_file_validates_with_the_gpu_service_as_default():
    default = subprocess.run(
        ["docker", "compose", "config", "--services"], cwd=ROOT, capture_output=True, text=True
    )
    assert default.returncode == 0, default.stderr
    assert default.stdout.split() == ["flows"]
    full = subprocess.run(
        ["docker", "compose", "--profile", "cpu", "--profile", "train", "config", "--format", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert full.returncode == 0, full.stderr
    services = json.loads(full.stdout)["services"]
    assert set(services) == {"flows", "flows-cpu", "train"}
    gpu = services["flows"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and services["flows"]["environment"]["FLOWS_DEVICE"] == "cuda"
    assert services["flows"]["healthcheck"]["start_period"]

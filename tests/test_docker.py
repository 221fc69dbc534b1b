"""The CPU Docker image, built and started with compose, answers real requests (scripts/docker_test.sh)."""

from __future__ import annotations

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
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "docker_smoke: ok" in result.stdout

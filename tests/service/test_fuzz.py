"""Schemathesis against a real uvicorn server: every operation, every check, positive and negative data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("schemathesis")

CONFIG = Path(__file__).with_name("schemathesis.toml")


def test_the_api_contract_holds_under_fuzzing(real_server, tmp_path):
    """Fixed seed and a bounded example count, so the run is reproducible and fits CI (about 30 s)."""
    command = [
        *(sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run"),
        f"{real_server.url}/openapi.json",
        *("--checks", "all", "--mode", "all", "--phases", "examples,coverage,fuzzing"),
        *("--seed", "42", "--max-examples", "10", "--workers", "1", "--request-timeout", "30"),
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    # every operation was exercised: health (2), metrics, models (2), sample, logprob, encode, decode,
    # interpolate and the playground page
    assert "Tested: 11" in run.stdout, run.stdout[-4000:]

"""The GPU verification scripts are checked on the CPU, so the one call on a GPU machine does not die on a
typo: the shell script parses, and both benchmarks run end to end in `--dry-run` (host driver, CPU)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import e2e_gpu, solve_gpu, subnet_precision
from kernels_cuda.build import find_cxx
from model import FlowConfig, build_flow, save_flow

from .helpers import randomise_parameters

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(find_cxx() is None, reason="no C++ compiler")


def test_gpu_check_script_parses_and_knows_its_flags():
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_check.sh")], check=True)
    bad = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--nonsense"], capture_output=True)
    assert bad.returncode == 2


def test_gpu_check_plan_fits_eight_minutes_with_a_budget_per_step():
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--plan"], capture_output=True, text=True, check=True
    )
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("  ")]
    budgets = {name: int(seconds.rstrip("s")) for name, seconds, *_ in rows}
    total = budgets.pop("total")
    assert {"build-cuda", "gpu-tests", "sanitizer-racecheck", "service-load"} <= set(budgets)
    assert all(b > 0 for b in budgets.values()) and total == sum(budgets.values()) <= 480


def test_gpu_wheels_script_parses():
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_wheels.sh")], check=True)


def test_solve_benchmark_dry_run_writes_results(tmp_path):
    assert solve_gpu.main(["--dry-run", "--out", str(tmp_path)]) == 0
    (result,) = tmp_path.glob("solve_gpu_*.json")
    payload = json.loads(result.read_text())
    assert payload["device"] == "cpu (dry run)" and payload["targets"]
    assert payload["machine"]["processor"]  # which CPU ran it (platform.processor() is empty on Linux)
    (row,) = payload["rows"]
    assert row["max_abs_diff_vs_torch"] < 1e-5 and row["ours_ms"] > 0


def _tiny_models(models: Path, archs: tuple[str, ...], dataset: str) -> Path:
    """One 8×8 checkpoint per architecture, with generic weights (the zero-initialised layers moved too)."""
    for arch in archs:
        config = FlowConfig(arch=arch, image_shape=(1, 8, 8), levels=1, steps=1, hidden=8, kernel_size=3)
        flow = build_flow(config)
        flow.train()
        flow.log_prob(torch.randint(0, 256, (4, 1, 8, 8)))  # ActNorm initialisation
        randomise_parameters(flow, std=0.05)
        save_flow(flow.eval(), models / arch, {"dataset": dataset})
    return models


def test_e2e_benchmark_dry_run_times_every_model(tmp_path):
    models = _tiny_models(tmp_path / "models", ("finc", "inverse_flow"), "none")
    assert e2e_gpu.main(["--dry-run", "--models", str(models), "--out", str(tmp_path)]) == 0
    payload = json.loads(next(tmp_path.glob("e2e_gpu_*.json")).read_text())
    assert {(r["model"], r["pass"]) for r in payload["rows"]} == {
        (m, p) for m in ("finc", "inverse_flow") for p in ("sample", "score")
    }


def test_training_precision_benchmark_times_and_scores_every_model(tmp_path):
    """gpu_check's training-precision step (quality runs off): step times and bits/dim in both precisions."""
    data = tmp_path / "tiny.npy"
    np.save(data, np.random.default_rng(0).integers(0, 256, (40, 8, 8), dtype=np.uint8))
    models = _tiny_models(tmp_path / "models", ("finc", "glow"), str(data))
    argv = ["--models", str(models), "--device", "cpu", "--quality-steps", "0", "--rounds", "1",
            "--out", str(tmp_path)]  # fmt: skip
    assert subnet_precision.main(argv) == 0
    rows = json.loads((tmp_path / "subnet_precision_cpu.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["finc", "glow"]
    for r in rows:
        assert r["float32_ms"] > 0 and r["bfloat16_ms"] > 0
        assert 0 < r["float32_bpd"] < 9 and abs(r["bpd_mismatch"]) < 0.05 * r["float32_bpd"]

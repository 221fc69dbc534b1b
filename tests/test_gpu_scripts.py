"""The GPU verification scripts are checked on the CPU, so the one call on a GPU machine does not die on a
typo: the shell script parses, and both benchmarks run end to end in `--dry-run` (host driver, CPU)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from benchmarks import e2e_gpu, solve_gpu
from kernels_cuda.build import find_cxx
from model import FlowConfig, build_flow, save_flow

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(find_cxx() is None, reason="no C++ compiler")


def test_gpu_check_script_parses_and_knows_its_flags():
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_check.sh")], check=True)
    bad = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--nonsense"], capture_output=True)
    assert bad.returncode == 2


def test_solve_benchmark_dry_run_writes_results(tmp_path):
    assert solve_gpu.main(["--dry-run", "--out", str(tmp_path)]) == 0
    (result,) = tmp_path.glob("solve_gpu_*.json")
    payload = json.loads(result.read_text())
    assert payload["device"] == "cpu (dry run)" and payload["targets"]
    (row,) = payload["rows"]
    assert row["max_abs_diff_vs_torch"] < 1e-5 and row["ours_ms"] > 0


def test_e2e_benchmark_dry_run_times_every_model(tmp_path):
    models = tmp_path / "models"
    for arch in ("finc", "inverse_flow"):
        config = FlowConfig(arch=arch, image_shape=(1, 8, 8), levels=1, steps=1, hidden=8, kernel_size=3)
        flow = build_flow(config)
        flow.train()
        flow.log_prob(torch.randint(0, 256, (4, 1, 8, 8)))  # ActNorm initialisation
        save_flow(flow.eval(), models / arch, {"dataset": "none"})
    assert e2e_gpu.main(["--dry-run", "--models", str(models), "--out", str(tmp_path)]) == 0
    payload = json.loads(next(tmp_path.glob("e2e_gpu_*.json")).read_text())
    assert {(r["model"], r["pass"]) for r in payload["rows"]} == {
        (m, p) for m in ("finc", "inverse_flow") for p in ("sample", "score")
    }

"""The architecture registry: each spec tells the truth about its layers, everything that lists
architectures derives from it, and a newly registered architecture gets every architecture test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import model.layers.finc
from model import FlowConfig, build_flow, save_flow
from model.architectures import ARCHITECTURES, PASSES, ArchitectureSpec, get_architecture, register
from model.card import model_card
from model.train import build_parser

from .toy_architecture import TOY

ROOT = Path(__file__).resolve().parents[1]


def _count_solves(monkeypatch) -> list[int]:
    """Counts the triangular solves the FInC and inverse-conv layers run (both call this one function)."""
    calls = [0]
    solve = model.layers.finc.tl_conv2d_solve

    def counting(*args, **kwargs):
        calls[0] += 1
        return solve(*args, **kwargs)

    monkeypatch.setattr(model.layers.finc, "tl_conv2d_solve", counting)
    return calls


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_the_solve_pass_is_the_only_pass_that_runs_a_triangular_solve(arch, monkeypatch):
    flow = build_flow(FlowConfig(arch=arch, image_shape=(1, 8, 8), levels=1, steps=1, hidden=8)).eval()
    images = torch.randint(0, 256, (2, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    calls = _count_solves(monkeypatch)
    passes = {
        "score": lambda: flow.log_prob(images),
        "sample": lambda: flow.sample(2, generator=torch.Generator().manual_seed(0)),
    }
    spec = get_architecture(arch)
    with torch.no_grad():
        for name in PASSES:
            calls[0] = 0
            passes[name]()
            assert (calls[0] > 0) == (spec.solve_pass == name), (name, calls[0])
    assert spec.solve_pass not in spec.onnx_passes and spec.title


def test_config_training_cli_and_cards_take_their_names_from_the_registry(tmp_path):
    assert FlowConfig.architectures() == list(ARCHITECTURES)
    arch_option = next(a for a in build_parser()._actions if "--arch" in a.option_strings)
    assert list(arch_option.choices) == list(ARCHITECTURES)
    with pytest.raises(ValueError, match="unknown architecture 'realnvp'; expected one of glow"):
        FlowConfig(arch="realnvp", image_shape=(1, 8, 8))
    for name, spec in ARCHITECTURES.items():
        flow = build_flow(FlowConfig(arch=name, image_shape=(1, 8, 8), levels=1, steps=1, hidden=8))
        save_flow(flow, tmp_path / name, {"dataset": "mnist", "steps": 1})
        assert f"| architecture | {spec.title} |" in model_card(tmp_path / name)


def test_registering_checks_the_spec():
    with pytest.raises(ValueError, match="already registered"):
        register(ARCHITECTURES["glow"])
    with pytest.raises(ValueError, match="ONNX"):
        ArchitectureSpec("bad", ARCHITECTURES["finc"].build_step, "Bad", "sample", ("score", "sample"))
    with pytest.raises(ValueError, match="identifier"):
        ArchitectureSpec("bad-name", ARCHITECTURES["glow"].build_step, "Bad", None, ())


@pytest.mark.slow
def test_a_registered_architecture_gets_every_architecture_test(tmp_path):
    """Collect the suite with one more architecture registered (tests/toy_architecture.py): every test
    that runs for `glow` runs for it too, with the same other parameters."""
    out = tmp_path / "collected.json"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.toy_architecture", "--collect-only", "-q", "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "FLOWS_COLLECTED": str(out)},
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    collected = json.loads(out.read_text())

    def key(nodeid: str, params: dict[str, str], arch: str) -> tuple:
        function = nodeid.split("[", 1)[0]
        return function, tuple(sorted((k, "ARCH" if v == arch else v) for k, v in params.items()))

    for_glow = {key(n, p, "glow") for n, p in collected.items() if "glow" in p.values()}
    for_toy = {key(n, p, TOY) for n, p in collected.items() if TOY in p.values()}
    assert for_glow, "no architecture-parametrised tests were collected"
    assert for_glow == for_toy, sorted(for_glow ^ for_toy)

"""The command lines: `python -m service`'s options are the `Settings` fields, and the installed `flowserve`
script runs every entry point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service.__main__ import build_parser
from service.__main__ import main as serve_main
from service.cli import COMMANDS
from service.settings import Settings

FLOWSERVE = Path(sys.executable).parent / "flowserve"


def test_every_setting_is_an_option_with_its_description_as_help():
    options = {a.dest: a for a in build_parser()._actions if a.option_strings}
    assert set(Settings.model_fields) <= set(options)
    for name, field in Settings.model_fields.items():
        assert field.description, f"Settings.{name} needs a description: it is the option's help"
        assert options[name].help.startswith(field.description.replace("%", "%%"))
        assert f"--{name.replace('_', '-')}" in options[name].option_strings
    args = build_parser().parse_args(["--no-warmup", "--overload-status", "429", "--device", "cpu"])
    assert (args.warmup, args.overload_status, args.device, args.port) == (False, 429, "cpu", None)


def test_invalid_settings_exit_with_status_2(capsys):
    assert serve_main(["--max-batch-images", "64", "--max-queue-images", "8"]) == 2
    assert "max_queue_images must be at least max_batch_images" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--device", "tpu"])


def _flowserve(*args: str) -> subprocess.CompletedProcess:
    if not FLOWSERVE.is_file():
        pytest.fail(f"{FLOWSERVE} is not installed: run scripts/setup.sh (pip install -e .)")
    return subprocess.run([str(FLOWSERVE), *args], capture_output=True, text=True, timeout=120)


def test_the_installed_flowserve_script_lists_and_runs_every_entry_point():
    listing = _flowserve("--help")
    assert listing.returncode == 0, listing.stderr
    assert all(name in listing.stdout for name in COMMANDS)
    for command, words in (
        ("serve", ["--max-batch-images", "--no-warmup", "FLOWS_MODELS"]),
        ("train", ["--arch", "--dataset", "inverse_flow"]),
        ("export", ["--real-images"]),
        ("client", ["sample", "logprob", "interpolate"]),
        ("card", ["--speed"]),
        ("evaluate", ["checkpoint"]),
    ):
        run = _flowserve(command, "--help")
        assert run.returncode == 0, (command, run.stderr)
        assert all(word in run.stdout for word in words), (command, run.stdout)
    unknown = _flowserve("fly")
    assert unknown.returncode == 2 and "unknown command 'fly'" in unknown.stderr


def test_flowserve_ood_is_the_command_that_makes_the_statistics():
    run = _flowserve("ood", "--help")
    assert run.returncode == 0, run.stderr
    assert all(word in run.stdout for word in ("checkpoints", "--threads", "--test-images", "--dataset"))
    assert "ood" in COMMANDS and COMMANDS["ood"][0] == "model.ood"

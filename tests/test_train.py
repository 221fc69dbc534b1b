"""Training CLI: learning-rate schedule, Polyak weights, training log and curve, refusing bad runs."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from model import load_flow
from model.card import model_card
from model.curves import (
    CURVE_FILE,
    LOG_FILE,
    plot_learning_curve,
    read_training_log,
    y_range_without_first_epoch,
)
from model.data import load_dataset, load_mnist
from model.flow import MultiScaleFlow
from model.train import main as train_main
from model.training import STATE_TENSORS, Schedule, read_train_state


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "digits.npy"
    np.save(path, load_mnist().train[:192].numpy()[:, 0])
    return path


ROOT = Path(__file__).resolve().parents[1]


def _args(out: Path, data: Path, *extra: str) -> list[str]:
    return [
        "--arch", "glow", "--dataset", str(data), "--out", str(out), "--steps", "1", "--hidden", "8",
        "--batch-size", "32", "--warmup-steps", "2", "--quiet", *extra,
    ]  # fmt: skip


def test_cosine_schedule_warms_up_then_decays_to_the_floor():
    plan = Schedule(
        lr=1e-3, kind="cosine", min_lr_ratio=0.1, warmup_steps=10, start_step=0, end_step=110, epochs=1
    )
    lrs = [plan.lr_at(step) for step in range(111)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    assert lrs[60] == pytest.approx(0.55e-3) and lrs[110] == pytest.approx(1e-4)
    constant = dataclasses.replace(plan, kind="constant")
    assert constant.lr_at(100) == pytest.approx(1e-3)
    # A continued run plans its own schedule from the step it starts at.
    later = dataclasses.replace(plan, start_step=1000, end_step=1110)
    assert [later.lr_at(1000 + s) for s in range(111)] == pytest.approx(lrs)
    assert Schedule.from_dict(plan.to_dict()) == plan


def test_the_schedule_is_planned_once_for_the_whole_run(tmp_path, digits):
    """Stopping and resuming keeps the plan: the learning rates of an interrupted run are those of one
    uninterrupted run, step for step."""
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert train_main(_args(whole, digits, "--epochs", "3")) == 0
    assert train_main(_args(parts, digits, "--epochs", "3", "--max-steps", "7")) == 0
    assert train_main(_args(parts, digits, "--epochs", "3", "--resume")) == 0
    assert read_train_state(parts).meta["schedule"] == read_train_state(whole).meta["schedule"]
    assert [r["lr"] for r in read_training_log(parts)] == [r["lr"] for r in read_training_log(whole)]


def test_training_writes_log_and_curve_and_checkpoints_polyak_weights(tmp_path, digits):
    out = tmp_path / "run"
    assert train_main(_args(out, digits, "--epochs", "2", "--ema-decay", "0.999")) == 0
    records = read_training_log(out)
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(np.isfinite(r["test_bits_per_dim"]) and r["train_bits_per_dim"] > 0 for r in records)
    assert (out / CURVE_FILE).stat().st_size > 1000
    # The checkpoint holds the averaged weights, the training state the live ones, and they differ.
    served, live = load_flow(out), load_flow(out)
    live.load_state_dict(read_train_state(out).live)
    diffs = [(a - b).abs().max().item() for a, b in zip(served.parameters(), live.parameters(), strict=True)]
    assert max(diffs) > 0
    # The average ramps its decay up, so after a few steps it is not stuck near the initialisation.
    test = torch.from_numpy(np.load(digits)[:64, None])
    with torch.inference_mode():
        gap = served.bits_per_dim(test).mean() - live.bits_per_dim(test).mean()
    assert abs(gap.item()) < 0.3, gap
    # Resuming keeps the average going from the checkpoint (not restarted from the live weights).
    assert train_main(_args(out, digits, "--epochs", "3", "--ema-decay", "0.9", "--resume")) == 0
    assert [r["epoch"] for r in read_training_log(out)] == [1, 2, 3]


def test_model_card_and_plot_cli_describe_a_trained_checkpoint(tmp_path, digits):
    from benchmarks.common import write_results
    from model.card import main as card_main
    from model.evaluate import main as evaluate_main

    out = tmp_path / "run"
    assert train_main(_args(out, digits, "--epochs", "1")) == 0
    (out / CURVE_FILE).unlink()
    assert evaluate_main([str(out), "--plot"]) == 0 and (out / CURVE_FILE).is_file()
    assert card_main([str(out)]) == 0
    card = (out / "README.md").read_text()
    bpd = read_training_log(out)[-1]["test_bits_per_dim"]
    assert f"**{bpd:.3f}**" in card and "Glow" in card and f"]({CURVE_FILE})" in card
    assert "1 epochs, 5 steps of batch 32" in card and "| speed" not in card
    assert "importance-weighted bound" not in card  # not measured yet

    # The importance-weighted bound (K = 64) beside the uniform one, on the same images, in the card.
    assert evaluate_main([str(out), "--dataset", str(digits), "--iw-images", "8", "--write-config"]) == 0
    iw = json.loads((out / "config.json").read_text())["training"]["importance_weighted_bound"]
    assert iw["samples"] == 64 and iw["test_images"] == 8
    flow, images = load_flow(out), load_dataset(str(digits)).test[:8]
    expected = flow.bits_per_dim(images, dequantization="hashed", samples=64).mean().item()
    assert abs(iw["bits_per_dim"] - expected) < 1e-3
    assert card_main([str(out)]) == 0
    iw_line = next(x for x in (out / "README.md").read_text().splitlines() if "importance-weighted" in x)
    assert f"**{iw['bits_per_dim']:.3f}** with K = 64 on the first 8 test images" in iw_line

    row = {"checkpoint": "run", "sample_100_ms": 12.5, "score_100_ms": 7.25}
    speeds = write_results("compare_architectures_cpu", [row], tmp_path, device="CPU, 2 threads")
    assert card_main([str(out), "--speed", str(speeds)]) == 0
    lines = (out / "README.md").read_text().splitlines()
    speed_line = next(line for line in lines if line.startswith("| speed"))
    assert "100 samples in 12.5 ms, 100 images scored in 7.25 ms" in speed_line
    assert speed_line.startswith("| speed (CPU, 2 threads, ")  # and the CPU's name and the date


def test_init_from_continues_a_checkpoint_without_its_optimizer_state(tmp_path, digits):
    first = tmp_path / "first"
    assert train_main(_args(first, digits, "--epochs", "2")) == 0
    second = tmp_path / "second"
    assert train_main(_args(second, digits, "--epochs", "3", "--init-from", str(first))) == 0
    log = read_training_log(second)
    assert [r["epoch"] for r in log] == [1, 2, 3] and log[:2] == read_training_log(first)
    state = read_train_state(second).meta
    assert state["global_step"] == 15
    plan = Schedule.from_dict(state["schedule"])  # warm-up again from where the checkpoint stood
    assert (plan.start_step, plan.end_step, plan.warmup_steps) == (10, 15, 2)
    assert plan.lr_at(10) == pytest.approx(plan.lr / 2)


def test_plot_is_none_without_a_log(tmp_path):
    assert plot_learning_curve(tmp_path) is None
    (tmp_path / LOG_FILE).write_text(json.dumps({"epochs": [{"epoch": 1, "test_bits_per_dim": 2.0}]}))
    assert plot_learning_curve(tmp_path) == tmp_path / CURVE_FILE


def test_the_curve_zooms_past_an_untrained_first_epoch_only():
    records = [{"epoch": e, "test_bits_per_dim": v} for e, v in enumerate([8.6, 1.75, 1.6, 1.4], start=1)]
    low, high = y_range_without_first_epoch(records, [(1, 3.0), (2, 1.8)])
    assert low < 1.4 and 1.8 < high < 2.0  # every later point shows; the 8.6 is off the chart
    assert y_range_without_first_epoch(records[:2], []) is None  # too few epochs to zoom
    flat = [{"epoch": e, "test_bits_per_dim": v} for e, v in enumerate([2.0, 1.75, 1.6], start=1)]
    assert y_range_without_first_epoch(flat, []) is None


def test_a_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(
    tmp_path, digits, monkeypatch, caplog
):
    out = tmp_path / "run"
    assert train_main(_args(out, digits, "--epochs", "1")) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    real = MultiScaleFlow.log_prob_continuous
    calls = {"n": 0}

    def poisoned(self, x):
        calls["n"] += 1
        value = real(self, x)
        return value * float("nan") if calls["n"] == 3 else value

    monkeypatch.setattr(MultiScaleFlow, "log_prob_continuous", poisoned)
    assert train_main(_args(out, digits, "--epochs", "2", "--resume")) == 2
    assert "at step 8 (epoch 2, batch 3)" in caplog.text  # 5 steps in epoch 1, then the third of epoch 2
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before


def test_data_that_does_not_fit_the_configuration_is_refused_clearly(tmp_path, digits, caplog):
    assert train_main(_args(tmp_path / "a", digits, "--levels", "3")) == 2
    assert "has 1×28×28 images, which this configuration cannot model" in caplog.text
    out = tmp_path / "b"
    assert train_main(_args(out, digits, "--max-steps", "1")) == 0
    small = tmp_path / "small.npy"
    np.save(small, torch.randint(0, 256, (64, 16, 16), dtype=torch.uint8).numpy())
    assert train_main(_args(out, small, "--resume")) == 2
    assert "models (1, 28, 28) images" in caplog.text


def test_a_run_killed_mid_epoch_resumes_from_its_last_complete_state(tmp_path, digits):
    """kill -9 at an arbitrary moment after the first checkpoint: the state on disk is whole (one file,
    renamed into place), loads, and `--resume` finishes the run from it."""
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "model.train",
        *_args(out, digits, "--epochs", "40", "--eval-images", "32"),
    ]
    run = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / STATE_TENSORS).is_file() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(random.Random(0).uniform(0.3, 1.0))  # somewhere in a later epoch, maybe mid-write
        assert run.poll() is None, "the run ended before it could be killed"
        run.send_signal(signal.SIGKILL)
        run.wait(30)
    finally:
        run.kill()
    saved = read_train_state(out)
    assert 1 <= saved.meta["epoch"] < 40 and saved.weights is not None
    epochs = str(saved.meta["epoch"] + 2)
    assert train_main(_args(out, digits, "--epochs", epochs, "--eval-images", "32", "--resume")) == 0
    log = read_training_log(out)
    assert [r["epoch"] for r in log] == list(range(1, saved.meta["epoch"] + 3))
    assert all(np.isfinite(r["test_bits_per_dim"]) for r in log)


def test_a_state_without_run_metadata_is_refused_with_the_way_forward(tmp_path, digits, caplog):
    out = tmp_path / "run"
    assert train_main(_args(out, digits, "--epochs", "1")) == 0
    from safetensors.torch import save_file

    saved = read_train_state(out)  # optimizer tensors alone, as no version of this code writes any more
    save_file({k: v.contiguous() for k, v in saved.optimizer.items()}, str(out / STATE_TENSORS))
    assert train_main(_args(out, digits, "--epochs", "2", "--resume")) == 2
    assert "has no run metadata" in caplog.text and "--init-from" in caplog.text


def test_a_mid_epoch_stop_keeps_the_evaluated_checkpoint_and_resumes_from_the_state(tmp_path, digits):
    out = tmp_path / "run"
    assert train_main(_args(out, digits, "--epochs", "1", "--ema-decay", "0.9")) == 0
    evaluated = {name: (out / name).read_bytes() for name in ("model.safetensors", "config.json")}
    assert (
        train_main(_args(out, digits, "--epochs", "2", "--ema-decay", "0.9", "--max-steps", "7", "--resume"))
        == 0
    )
    # Two more steps were taken, but the served weights and their bits/dim still belong to epoch 1.
    assert {name: (out / name).read_bytes() for name in evaluated} == evaluated
    saved = read_train_state(out)
    assert (saved.meta["epoch"], saved.meta["batch"], saved.meta["global_step"]) == (1, 2, 7)
    served = load_flow(out).state_dict()
    assert any(not torch.equal(served[k], v) for k, v in saved.weights.items())
    assert train_main(_args(out, digits, "--epochs", "2", "--ema-decay", "0.9", "--resume")) == 0
    assert (
        read_train_state(out).meta["global_step"] == 10
        and (out / "model.safetensors").read_bytes() != (evaluated["model.safetensors"])
    )


def test_ship_checkpoint_script_ships_only_evaluated_weights(tmp_path, digits):
    run = tmp_path / "run"
    assert train_main(_args(run, digits, "--epochs", "1")) == 0
    ship = ROOT / "scripts" / "ship_checkpoint.sh"
    env = {**os.environ, "PYTHON": sys.executable}
    shipped = tmp_path / "shipped"
    done = subprocess.run(["bash", ship, run, shipped], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    names = {p.name for p in shipped.iterdir()}
    assert {"config.json", "model.safetensors", "samples.png", "README.md", "onnx"} <= names
    assert not any(name.startswith("train_state") for name in names)
    assert load_flow(shipped).num_parameters() == load_flow(run).num_parameters()
    snapshot = tmp_path / "snapshot"
    done = subprocess.run(["bash", ship, run, snapshot, "--no-onnx"], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and not (snapshot / "onnx").exists(), done.stderr
    big = tmp_path / "big"  # graphs that would take the folder over its size budget are left out
    small = {**env, "MAX_FOLDER_MIB": "0"}
    done = subprocess.run(["bash", ship, run, big], env=small, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and not (big / "onnx").exists(), done.stderr
    assert "graphs left out" in done.stderr and (big / "model.safetensors").is_file()
    config = json.loads((run / "config.json").read_text())
    config["training"]["steps"] += 1  # weights newer than their evaluation (a run of an older version)
    (run / "config.json").write_text(json.dumps(config))
    done = subprocess.run(["bash", ship, run, tmp_path / "x"], env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "ship after the next epoch ends" in done.stderr


def test_a_grown_and_continued_model_records_its_stages_and_its_card_lists_them(tmp_path, digits):
    """train 1 epoch → grow (model.growth) → continue 1 epoch, stopped and resumed: the last config nests
    each earlier stage's summary, growth included, and the card lists the stages oldest first."""
    from model.growth import main as growth_main

    first, grown, last = tmp_path / "first", tmp_path / "grown", tmp_path / "last"
    assert train_main(_args(first, digits, "--epochs", "1")) == 0
    assert growth_main([str(first), "--out", str(grown), "--steps", "2,2", "--hidden", "16,16"]) == 0
    more = ("--epochs", "2", "--init-from", str(grown), "--steps", "2", "--hidden", "16")
    more += ("--batch-size", "16")
    assert train_main(_args(last, digits, *more, "--max-steps", "12")) == 0
    assert train_main(_args(last, digits, *more, "--resume")) == 0
    training = json.loads((last / "config.json").read_text())["training"]
    earlier = training["continued_from"]
    assert earlier["grown_from"]["checkpoint"] == "first" and earlier["epochs"] == 1
    assert training["epochs"] == 2 and training["num_parameters"] > earlier["num_parameters"]
    (row,) = [line for line in model_card(last).splitlines() if line.startswith("| made in stages")]
    small, big = earlier["num_parameters"], training["num_parameters"]
    assert f"epochs 1–1: batch 32, lr 0.002, {small:,} parameters, then grown" in row
    assert f"to {big:,}; epochs 2–2: batch 16" in row
    assert "| training (last stage) | 2 epochs" in model_card(last)
    assert "made in stages" not in model_card(first)


def test_a_continuation_stopped_in_its_first_epoch_resumes(tmp_path, digits):
    """`--init-from A --out B --max-minutes ...` stopping before B's first epoch ends leaves B resumable."""
    first, second = tmp_path / "first", tmp_path / "second"
    assert train_main(_args(first, digits, "--epochs", "1")) == 0
    more = ("--epochs", "2", "--init-from", str(first))
    assert train_main(_args(second, digits, *more, "--max-steps", "7")) == 0
    assert read_train_state(second).meta["global_step"] == 7 and (second / "config.json").is_file()
    assert train_main(_args(second, digits, *more, "--resume")) == 0
    assert [r["epoch"] for r in read_training_log(second)] == [1, 2]


def test_gpu_train_script_packs_a_state_that_the_next_call_resumes(tmp_path, digits):
    """`scripts/gpu_train.sh` (one call per device lease): start from a checkpoint, stop mid-run, pack the
    run into one tar; unpacked into an empty runs folder, the next call resumes it and finishes the epoch."""
    assert train_main(_args(tmp_path / "checkpoints" / "tiny", digits, "--epochs", "1")) == 0
    script = ROOT / "scripts" / "gpu_train.sh"
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out")}

    def call(runs: Path, *extra: str) -> subprocess.CompletedProcess:
        command = ["bash", script, "--device", "cpu", "--minutes", "5", "--runs", runs, "--from",
                   tmp_path / "checkpoints", f"tiny:2:{digits}",
                   "--", "--batch-size", "32", "--warmup-steps", "2", *extra]  # fmt: skip
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)

    first = call(tmp_path / "runs1", "--max-steps", "8")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "=== tiny: ok" in first.stdout
    second_runs = tmp_path / "runs2" / "tiny"
    second_runs.mkdir(parents=True)
    parts = sorted((tmp_path / "out").glob("tiny.tar.*"))
    assert parts and all(p.stat().st_size <= 15 * 2**20 for p in parts)
    packed = b"".join(p.read_bytes() for p in parts)
    subprocess.run(["tar", "-xf", "-", "-C", second_runs], input=packed, check=True)
    assert read_train_state(second_runs).meta["global_step"] == 8
    second = call(tmp_path / "runs2")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resuming" in second.stdout and "epoch   2" in second.stdout
    assert [r["epoch"] for r in read_training_log(second_runs)] == [1, 2]
    assert read_train_state(second_runs).meta["global_step"] == 10
    bad = subprocess.run(["bash", script, "tiny"], capture_output=True, text=True)
    assert bad.returncode == 2 and "usage" in bad.stderr


def test_bfloat16_subnets_train_and_are_recorded_in_the_log_and_config(tmp_path, digits):
    out = tmp_path / "run"
    assert train_main(_args(out, digits, "--epochs", "1", "--subnet-precision", "bfloat16")) == 0
    (row,) = read_training_log(out)
    training = json.loads((out / "config.json").read_text())["training"]
    assert row["subnet_precision"] == training["subnet_precision"] == "bfloat16"
    assert np.isfinite(row["test_bits_per_dim"]) and row["test_bits_per_dim"] < 8
    assert "coupling networks in bfloat16 (autocast) in epoch 1 " in model_card(out)

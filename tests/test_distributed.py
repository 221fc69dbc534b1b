"""Multi-process training: 2 CPU processes (torchrun, gloo) take the same steps as one process on the same
global batch, resume included; the global batch is split evenly or refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from model.data import load_mnist
from model.distributed import Distributed
from model.train import main as train_main
from model.training import read_train_state

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "digits.npy"
    np.save(path, load_mnist().train[:64].numpy()[:, 0])
    return path


def _args(out: Path, data: Path, *extra: str) -> list[str]:
    return [
        "--arch", "glow", "--dataset", str(data), "--out", str(out), "--steps", "1", "--hidden", "8",
        "--batch-size", "16", "--warmup-steps", "2", "--eval-images", "16", "--ema-decay", "0.9",
        "--device", "cpu", "--subnet-precision", "float32", "--lr", "1e-3", "--quiet", *extra,
    ]  # fmt: skip


def _torchrun(args: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*cmd, "-m", "model.train", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _weights(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {
        "checkpoint": load_file(str(out / "model.safetensors")),
        "live": read_train_state(out).live,
    }


def _assert_same_weights(a: Path, b: Path) -> None:
    for kind, tensors in _weights(a).items():
        other = _weights(b)[kind]
        assert tensors.keys() == other.keys()
        for name, value in tensors.items():
            # Adam moves every weight by about lr (1e-3) per step, so float summation-order noise in a
            # near-zero gradient shows as up to ~5e-5 after a few steps; ActNorm initialised on each
            # process's half batch instead of the global batch differs by ~7e-2.
            # (float32 coupling networks: bfloat16 would differ by its rounding between the half batches.)
            torch.testing.assert_close(other[name], value, rtol=0, atol=2e-4, msg=f"{kind} {name}")


def test_two_processes_train_like_one_on_the_same_global_batch_and_resume(tmp_path, digits):
    one, two = tmp_path / "one", tmp_path / "two"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process
    try:
        # 4 batches per epoch: stop mid-epoch 1, then resume across the epoch boundary (evaluation, grid).
        assert train_main(_args(one, digits, "--epochs", "2", "--max-steps", "2")) == 0
        first = _torchrun(_args(two, digits, "--epochs", "2", "--max-steps", "2"))
        _assert_same_weights(one, two)
        assert train_main(_args(one, digits, "--epochs", "2", "--max-steps", "6", "--resume")) == 0
        _torchrun(_args(two, digits, "--epochs", "2", "--max-steps", "6", "--resume"))
    finally:
        torch.set_num_threads(threads)
    _assert_same_weights(one, two)
    config = json.loads((two / "config.json").read_text())
    assert config["training"]["processes"] == 2 and config["training"]["steps"] == 6
    assert first.stdout.count('"processes": 2') == 1  # only rank 0 prints the summary
    assert sorted(p.name for p in two.glob("samples_epoch*.png")) == [
        f"samples_epoch00{i}.png" for i in (1, 2)
    ]
    log_one = json.loads((one / "training_log.json").read_text())
    log_two = json.loads((two / "training_log.json").read_text())
    for a, b in zip(log_one["epochs"], log_two["epochs"], strict=True):
        assert b["train_bits_per_dim"] == pytest.approx(a["train_bits_per_dim"], rel=1e-5)
        assert b["test_bits_per_dim"] == pytest.approx(a["test_bits_per_dim"], rel=1e-4)


def test_the_global_batch_is_split_evenly_or_refused():
    batch = torch.arange(8)
    assert Distributed(0, 1).shard(batch).tolist() == list(range(8))
    assert Distributed(1, 2).shard(batch).tolist() == [4, 5, 6, 7]
    assert Distributed(2, 4).shard(batch).tolist() == [4, 5]
    with pytest.raises(ValueError, match="not divisible by 3 processes"):
        Distributed(0, 3).local_batch(16)

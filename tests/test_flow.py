"""Whole flows: exact densities, invertibility, checkpoints, training, data loaders."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model import CheckpointError, FlowConfig, build_flow, load_flow, read_config, save_flow
from model.architectures import ARCHITECTURES
from model.data import FASHION_MNIST_DIR, load_dataset, load_fashion_mnist, load_mnist, load_npy
from model.train import main as train_main
from model.training import read_train_state

from .helpers import randomise_parameters

ARCHS = list(ARCHITECTURES)  # every registered architecture gets every test here
CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
SHIPPED = (
    sorted(p for p in CHECKPOINTS.iterdir() if (p / "config.json").is_file()) if CHECKPOINTS.is_dir() else []
)


def tiny_flow(arch: str, image_shape=(1, 8, 8), levels=2, dtype=torch.float64):
    config = FlowConfig(arch=arch, image_shape=image_shape, levels=levels, steps=1, hidden=8, kernel_size=2)
    flow = build_flow(config).to(dtype)
    images = torch.randint(0, 256, (4, *image_shape), generator=torch.Generator().manual_seed(0))
    flow.train()
    flow.log_prob(images)  # ActNorm initialisation
    randomise_parameters(flow, std=0.05)
    return flow.eval(), images


@pytest.mark.parametrize("arch", ARCHS)
def test_log_prob_is_the_change_of_variables_formula_on_the_dense_jacobian(arch):
    flow, images = tiny_flow(arch, image_shape=(1, 4, 4))
    x = images[:1].double() + 0.5

    def to_latent(v):
        latents, _ = flow.encode(v.reshape(x.shape))
        return torch.cat([z.flatten(1) for z in latents], 1).reshape(-1)

    jac = torch.autograd.functional.jacobian(to_latent, x.reshape(-1))
    z = to_latent(x.reshape(-1))
    expected = torch.linalg.slogdet(jac)[1] - 0.5 * (z.square() + math.log(2 * math.pi)).sum()
    assert abs(flow.log_prob_continuous(x).item() - expected.item()) < 1e-8


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_decode_inverts_encode(arch, dtype):
    flow, images = tiny_flow(arch, dtype=dtype)
    x = images.to(dtype) + torch.rand(images.shape, dtype=dtype)
    with torch.no_grad():
        latents, _ = flow.encode(x)
        assert [tuple(z.shape[1:]) for z in latents] == flow.latent_shapes()
        tol = 1e-8 if dtype == torch.float64 else 2e-2  # float32: pixels near 0/255 sit on the logit's tails
        assert (flow.decode(latents) - x).abs().max().item() < tol


@pytest.mark.parametrize("arch", ARCHS)
def test_samples_are_uint8_images_with_finite_log_prob(arch):
    flow, _ = tiny_flow(arch, dtype=torch.float32)
    with torch.no_grad():
        samples = flow.sample(5, temperature=0.8, generator=torch.Generator().manual_seed(3))
        assert samples.dtype == torch.uint8 and samples.shape == (5, 1, 8, 8)
        assert torch.isfinite(flow.log_prob(samples)).all()
        again = flow.sample(5, temperature=0.8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(samples, again)


def test_bits_per_dim_is_negative_log2_likelihood_per_dimension():
    flow, images = tiny_flow("glow")
    with torch.no_grad():
        torch.testing.assert_close(flow.bits_per_dim(images), -flow.log_prob(images) / (64 * math.log(2)))


@pytest.mark.parametrize("arch", ARCHS)
def test_checkpoint_round_trip_gives_identical_outputs(arch, tmp_path):
    flow, images = tiny_flow(arch, dtype=torch.float32)
    save_flow(flow, tmp_path / "ckpt", {"dataset": "test"})
    loaded = load_flow(tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(flow.log_prob(images), loaded.log_prob(images))
        gen = torch.Generator().manual_seed(0)
        latents = flow.sample_latents(3, 1.0, gen)
        assert torch.equal(flow.decode(latents), loaded.decode(latents))
    config = read_config(tmp_path / "ckpt")
    assert config["architecture"]["arch"] == arch and config["num_parameters"] == flow.num_parameters()
    assert not list((tmp_path / "ckpt").glob("*.pt")) and not list((tmp_path / "ckpt").glob("*.pkl"))


def test_checkpoint_errors_are_clear(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_flow(tmp_path / "nowhere")
    flow, _ = tiny_flow("finc", dtype=torch.float32)
    save_flow(flow, tmp_path / "a")
    (tmp_path / "a" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no model\.safetensors"):
        load_flow(tmp_path / "a")
    save_flow(flow, tmp_path / "b")
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    config["architecture"]["arch"] = "glow"
    (tmp_path / "b" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not match architecture 'glow'"):
        load_flow(tmp_path / "b")
    config["architecture"]["arch"] = "realnvp"
    (tmp_path / "b" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="invalid architecture"):
        load_flow(tmp_path / "b")
    save_flow(flow, tmp_path / "c")
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    config["architecture"]["hidden"] = 16
    (tmp_path / "c" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="shape of"):
        load_flow(tmp_path / "c")


def test_config_rejects_images_the_levels_cannot_halve():
    with pytest.raises(ValueError, match="not divisible"):
        FlowConfig(arch="finc", image_shape=(1, 28, 28), levels=3)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_few_training_steps_lower_the_loss_and_resume_continues(arch, tmp_path):
    images = load_mnist().train[:512].numpy()
    np.save(tmp_path / "digits.npy", images[:, 0])
    out = tmp_path / "run"
    common = ["--arch", arch, "--dataset", str(tmp_path / "digits.npy"), "--out", str(out), "--levels", "2"]
    common += ["--steps", "1", "--hidden", "16", "--batch-size", "32", "--warmup-steps", "1", "--quiet"]
    train_main([*common, "--epochs", "1", "--lr", "3e-3"])
    first = read_config(out)["training"]
    train_main([*common, "--epochs", "4", "--lr", "3e-3", "--resume"])
    after = read_config(out)["training"]
    assert after["epochs"] == 4 and after["steps"] == 4 * first["steps"]
    assert after["test_bits_per_dim"] < first["test_bits_per_dim"] - 0.2
    assert (out / "samples_epoch004.png").is_file()


def test_time_budget_stops_mid_epoch_and_resume_finishes(tmp_path):
    images = load_mnist().train[:256].numpy()
    np.save(tmp_path / "d.npy", images)
    out = tmp_path / "run"
    args = ["--arch", "glow", "--dataset", str(tmp_path / "d.npy"), "--out", str(out), "--steps", "1"]
    args += ["--hidden", "8", "--batch-size", "16", "--epochs", "1", "--quiet"]
    train_main([*args, "--max-steps", "3"])
    state = read_train_state(out).meta
    assert (state["epoch"], state["batch"]) == (0, 3)
    train_main([*args, "--resume"])
    state = read_train_state(out).meta
    assert (state["epoch"], state["global_step"]) == (1, 230 // 16)


def test_mnist_loader_returns_uint8_images():
    data = load_mnist()
    assert data.train.shape == (60000, 1, 28, 28) and data.test.shape == (10000, 1, 28, 28)
    assert data.train.dtype == torch.uint8 and int(data.train.max()) == 255


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_fashion_mnist_loader_returns_uint8_images():
    data = load_fashion_mnist()
    assert data.train.shape == (60000, 1, 28, 28) and data.test.shape == (10000, 1, 28, 28)
    assert data.train.dtype == torch.uint8


def test_folder_and_npy_loaders(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (10, 8, 6, 3), dtype=np.uint8)
    for i, image in enumerate(rgb):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    data = load_dataset(str(tmp_path))
    assert data.image_shape == (3, 8, 6) and data.train.shape[0] + data.test.shape[0] == 10
    assert data.train.dtype == torch.uint8
    np.save(tmp_path / "x.npy", rgb)
    assert load_npy(tmp_path / "x.npy").image_shape == (3, 8, 6)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet")


@pytest.mark.parametrize("checkpoint", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_checkpoint_loads_and_matches_its_reported_bits_per_dim(checkpoint):
    flow = load_flow(checkpoint)
    training = read_config(checkpoint)["training"]
    data = load_dataset(training["dataset"])
    # A seeded random subset: the test set's first images are easier than average (by ~0.1 bits/dim).
    subset = torch.randperm(data.test.shape[0], generator=torch.Generator().manual_seed(0))[:256]
    with torch.inference_mode():
        bpd = flow.bits_per_dim(data.test[subset]).mean().item()
    assert abs(bpd - training["test_bits_per_dim"]) < 0.05, (bpd, training["test_bits_per_dim"])
    assert (checkpoint / "model.safetensors").stat().st_size <= 8 * 2**20


def test_evaluate_cli_reports_bits_per_dim_and_throughput(tmp_path, capsys):
    from model.evaluate import main as evaluate_main

    images = load_mnist().test[:64].numpy()
    np.save(tmp_path / "d.npy", images)
    flow, _ = tiny_flow("finc", image_shape=(1, 28, 28), dtype=torch.float32)
    save_flow(flow, tmp_path / "ckpt", {"dataset": str(tmp_path / "d.npy")})
    assert (
        evaluate_main([str(tmp_path / "ckpt"), "--batch-size", "8", "--grid", str(tmp_path / "g.png")]) == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["test_bits_per_dim"] > 0 and report["sampling_images_per_s"] > 0
    assert report["scoring_images_per_s"] > 0 and (tmp_path / "g.png").is_file()


def test_scoring_noise_is_seeded_per_image_so_scores_do_not_depend_on_the_batch():
    flow, images = tiny_flow("glow", dtype=torch.float64)
    with torch.no_grad():
        together = flow.log_prob(images)
        alone = torch.cat([flow.log_prob(images[i : i + 1]) for i in range(len(images))])
        torch.testing.assert_close(together, alone)
        assert torch.equal(flow.log_prob(images), together)
        # Fresh uniform noise gives a different value per call; its mean is what hashed noise estimates.
        a = flow.log_prob(images, dequantization="uniform", generator=torch.Generator().manual_seed(1))
        assert not torch.equal(a, together)


def test_importance_weighted_bound_over_k_hashed_draws():
    from model.layers import hashed_noise_samples
    from model.layers.preprocess import hashed_noise

    flow, images = tiny_flow("finc", dtype=torch.float64)
    with torch.no_grad():
        noise = hashed_noise_samples(images.double(), 6)
        assert torch.equal(noise[0], hashed_noise(images.double()))
        assert torch.equal(hashed_noise_samples(images.double(), 3), noise[:3])  # draw k does not depend on K
        per_draw = torch.stack([flow.log_prob_continuous(images + noise[k]) for k in range(6)])
        bound = flow.log_prob(images, samples=6)
        torch.testing.assert_close(bound, torch.logsumexp(per_draw, 0) - math.log(6))
        # Jensen: log of the mean ≥ the mean of the logs, with equality only for equal draws.
        assert (bound > per_draw.mean(0)).all() and (bound <= per_draw.max(0).values).all()
        torch.testing.assert_close(flow.log_prob(images, samples=1), flow.log_prob(images))
        alone = torch.cat([flow.log_prob(images[i : i + 1], samples=6) for i in range(len(images))])
        torch.testing.assert_close(alone, bound)
        with pytest.raises(ValueError, match="hashed"):
            flow.log_prob(images, dequantization="uniform", samples=2)

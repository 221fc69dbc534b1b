"""ONNX export: which passes export, that they match torch, and that stale graphs are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model import FlowConfig, build_flow, save_flow
from model.architectures import ARCHITECTURES
from model.export import _check_score, export_checkpoint, weights_digest
from model.layers import dequantize
from service.onnx_backend import graphs_folder, load_onnx_passes

from .helpers import randomise_parameters


def tiny_checkpoint(arch: str, path):
    flow = build_flow(
        FlowConfig(arch=arch, image_shape=(1, 8, 8), levels=2, steps=1, hidden=8, kernel_size=3)
    )
    flow.train()
    flow.log_prob(torch.randint(0, 256, (8, 1, 8, 8)))
    randomise_parameters(flow, std=0.02)
    save_flow(flow.eval(), path, {"dataset": "none"})
    return flow


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_convolution_only_passes_export_and_match_torch(arch, tmp_path):
    flow = tiny_checkpoint(arch, tmp_path / arch)
    real = torch.randint(0, 256, (5, 1, 8, 8), generator=torch.Generator().manual_seed(3))
    manifest = export_checkpoint(tmp_path / arch, real=real)
    assert tuple(manifest["passes"]) == ARCHITECTURES[arch].onnx_passes
    passes = load_onnx_passes(tmp_path / arch, torch.device("cpu"))
    flow.freeze()
    with torch.inference_mode():
        if "score" in passes:
            images = torch.randint(0, 256, (11, 1, 8, 8), generator=torch.Generator().manual_seed(4))
            got = passes["score"].run({"images": dequantize(images.float(), "hashed").numpy()})
            np.testing.assert_allclose(got, flow.log_prob(images).numpy(), rtol=1e-5)
        if "sample" in passes:
            latents = flow.sample_latents(13, 0.8, torch.Generator().manual_seed(5))
            feed = {
                "temperature": np.ones(1, np.float32),
                **{f"z{i}": z.numpy() for i, z in enumerate(latents)},
            }
            got = passes["sample"].run(feed)
            np.testing.assert_allclose(got, flow.decode(latents).numpy(), atol=0.05)


@pytest.mark.slow
def test_graphs_from_other_weights_are_refused(tmp_path):
    tiny_checkpoint("glow", tmp_path / "m")
    export_checkpoint(tmp_path / "m")
    tiny_checkpoint("glow", tmp_path / "m")  # same architecture, new weights
    with pytest.raises(RuntimeError, match="other weights"):
        load_onnx_passes(tmp_path / "m", torch.device("cpu"))


@pytest.mark.slow
@pytest.mark.parametrize("real", [False, True], ids=["noise-images", "real-images"])
def test_a_score_graph_that_computes_something_else_fails_its_check(tmp_path, real):
    """The check compares with torch (float32 and float64): a graph of other weights cannot pass."""
    tiny_checkpoint("finc", tmp_path / "a")
    other = tiny_checkpoint("finc", tmp_path / "b")
    export_checkpoint(tmp_path / "a")
    images = torch.randint(0, 256, (5, 1, 8, 8), generator=torch.Generator().manual_seed(3)) if real else None
    with pytest.raises(RuntimeError, match="real images" if real else "noise images"):
        _check_score(other.freeze(), tmp_path / "a" / "onnx" / "score.onnx", images)


def test_a_checkpoint_without_graphs_has_no_onnx_passes(tmp_path):
    tiny_checkpoint("finc", tmp_path / "m")
    assert load_onnx_passes(tmp_path / "m", torch.device("cpu")) == {}


@pytest.mark.slow
def test_a_checkpoint_without_graphs_gets_them_exported_into_the_cache_once(tmp_path, monkeypatch):
    flow = tiny_checkpoint("glow", tmp_path / "m")
    cache = tmp_path / "cache"
    passes = load_onnx_passes(tmp_path / "m", torch.device("cpu"), cache=cache)
    assert set(passes) == {"score", "sample"}
    (folder,) = cache.iterdir()  # no temporary folder left beside it
    assert folder.name == f"m-{weights_digest(tmp_path / 'm')[:16]}"
    assert not (tmp_path / "m" / "onnx").exists()  # the model folder is left as it was
    images = torch.randint(0, 256, (3, 1, 8, 8), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        want = flow.freeze().log_prob(images).numpy()
    got = passes["score"].run({"images": dequantize(images.float(), "hashed").numpy()})
    np.testing.assert_allclose(got, want, rtol=1e-5)

    def no_second_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr("service.onnx_backend.subprocess.run", no_second_export)
    assert set(load_onnx_passes(tmp_path / "m", torch.device("cpu"), cache=cache)) == {"score", "sample"}
    tiny_checkpoint("glow", tmp_path / "m")  # new weights: a new export, under a new digest
    with pytest.raises(AssertionError, match="exported again"):
        load_onnx_passes(tmp_path / "m", torch.device("cpu"), cache=cache)


def test_shipped_graphs_win_over_the_cache(tmp_path):
    tiny_checkpoint("glow", tmp_path / "m")
    (tmp_path / "m" / "onnx").mkdir()
    (tmp_path / "m" / "onnx" / "manifest.json").write_text("{}")
    assert graphs_folder(tmp_path / "m", tmp_path / "cache") == tmp_path / "m" / "onnx"
    assert graphs_folder(tmp_path / "none", tmp_path / "cache") is None  # no checkpoint: nothing to export
    assert not (tmp_path / "cache").exists()
    (tmp_path / "m" / "onnx" / "manifest.json").unlink()
    (tmp_path / "file").write_text("")  # a cache that cannot be made: an error naming it, not an OSError
    with pytest.raises(RuntimeError, match="cannot export m's ONNX graphs into"):
        graphs_folder(tmp_path / "m", tmp_path / "file" / "cache")


@pytest.mark.slow
def test_a_failed_export_is_an_error_naming_the_model_and_leaves_no_folder(tmp_path):
    tiny_checkpoint("glow", tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(RuntimeError, match="exporting m to ONNX failed"):
        graphs_folder(tmp_path / "m", tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
SHIPPED_ONNX = sorted(p.parent.parent for p in CHECKPOINTS.glob("*/onnx/manifest.json"))


@pytest.mark.parametrize("checkpoint", SHIPPED_ONNX, ids=[p.name for p in SHIPPED_ONNX])
def test_shipped_onnx_graphs_belong_to_the_shipped_weights(checkpoint):
    manifest = json.loads((checkpoint / "onnx" / "manifest.json").read_text())
    assert manifest["weights_sha256"] == weights_digest(checkpoint), "re-run python -m model.export"
    assert tuple(manifest["passes"]) == ARCHITECTURES[manifest["architecture"]].onnx_passes


SHIPPED = sorted(p.parent for p in CHECKPOINTS.glob("*/config.json"))
MAX_FOLDER_BYTES = 10 * 2**20


@pytest.mark.parametrize("checkpoint", SHIPPED, ids=[p.name for p in SHIPPED])
def test_a_shipped_model_folder_is_at_most_10_mib(checkpoint):
    size = sum(f.stat().st_size for f in checkpoint.rglob("*") if f.is_file())
    assert size <= MAX_FOLDER_BYTES, f"{checkpoint.name}: {size / 2**20:.1f} MiB (scripts/ship_checkpoint.sh)"

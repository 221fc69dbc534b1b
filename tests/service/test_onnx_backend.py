"""The onnxruntime backend serves the same API with the same answers (within float32 rounding)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient

import kernels_cuda
from model.architectures import ARCHITECTURES
from model.data import load_mnist
from service.app import create_app
from service.settings import Settings

from .conftest import MODELS, SHIPPED

pytestmark = pytest.mark.skipif(not SHIPPED, reason="no shipped checkpoints")


@pytest.fixture(scope="module")
def clients():
    apps = {
        b: TestClient(create_app(Settings(models=MODELS, backend=b, max_batch_images=16)))
        for b in ("onnx", "torch")
    }
    for c in apps.values():
        c.__enter__()
    yield apps
    for c in apps.values():
        c.__exit__(None, None, None)


def test_models_report_their_backend_per_operation(clients):
    onnx_info = clients["onnx"].get("/models").json()["models"]
    assert {m["name"] for m in onnx_info} == set(SHIPPED)
    for m in onnx_info:  # graphs shipped in the folder or exported at start-up into the cache alike
        exported = ARCHITECTURES[m["architecture"]].onnx_passes
        for operation, graph in (("sample", "sample"), ("logprob", "score")):
            want = "onnxruntime:CPU" if graph in exported else "torch:cpu"
            assert m["backend"][operation].startswith(want), (m["name"], operation, m["backend"])
    torch_info = clients["torch"].get("/models").json()["models"]
    solve = "torch:cpu+solve:" + kernels_cuda.serving_backend("cpu")  # the solve pass names its kernel
    solve_pass = {"finc": "sample", "inverse_flow": "logprob"}
    for m in torch_info:
        expected_backends = {"sample": "torch:cpu", "logprob": "torch:cpu"}
        if m["architecture"] in solve_pass:
            expected_backends[solve_pass[m["architecture"]]] = solve
        assert m["backend"] == expected_backends


@pytest.mark.parametrize("model", SHIPPED)
def test_onnx_and_torch_backends_agree(clients, model):
    digits = load_mnist().test[:8, 0].tolist()
    scores = {
        b: np.array(
            [
                r["bits_per_dim"]
                for r in c.post("/logprob", json={"model": model, "images": digits}).json()["results"]
            ]
        )
        for b, c in clients.items()
    }
    np.testing.assert_allclose(scores["onnx"], scores["torch"], atol=1e-3)
    samples = {}
    for b, c in clients.items():
        body = c.post("/sample", json={"model": model, "num_samples": 8, "seed": 5, "format": "npy"}).json()
        samples[b] = np.load(io.BytesIO(base64.b64decode(body["npy"]))).astype(int)
    assert np.abs(samples["onnx"] - samples["torch"]).max() <= 1  # a value on a bin edge may round either way
    assert (samples["onnx"] == samples["torch"]).mean() > 0.999

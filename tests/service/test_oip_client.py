"""`tritonclient` (NVIDIA's Open Inference Protocol client, unchanged) against a real uvicorn: metadata,
readiness, scoring with JSON and binary tensors equal to `/logprob`, sampling equal to `/sample`, the
server's message in the client's exception, and the repository's load and unload."""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from model.data import load_mnist

from .conftest import SHIPPED, RealServer
from .test_concurrency import histogram

http = pytest.importorskip("tritonclient.http")
utils = pytest.importorskip("tritonclient.utils")

MODEL = "glow-mnist"
pytestmark = pytest.mark.skipif(MODEL not in SHIPPED, reason="needs the shipped glow-mnist")


@pytest.fixture(scope="module")
def server() -> Iterator[RealServer]:
    # An idle model waits up to 300 ms for a fuller batch: requests sent together share one.
    with RealServer("--max-batch-images", "16", "--max-wait-ms", "300") as running:
        yield running


@pytest.fixture(scope="module")
def client(server: RealServer) -> Iterator:
    with http.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=60) as triton:
        yield triton


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_mnist().test[:5].numpy()


def logprob(server: RealServer, images: np.ndarray) -> list[dict]:
    r = httpx.post(
        server.url + "/logprob", json={"model": MODEL, "images": images[:, 0].tolist()}, timeout=60
    )
    assert r.status_code == 200, r.text
    return r.json()["results"]


def images_input(images: np.ndarray, binary: bool):
    tensor = http.InferInput("images", list(images.shape), "UINT8")
    return tensor.set_data_from_numpy(images, binary_data=binary)


def test_server_and_model_metadata_and_readiness(client):
    assert client.is_server_live() and client.is_server_ready()
    server = client.get_server_metadata()
    assert server["name"] == "flowserve" and {"binary_tensor_data", "model_repository"} <= set(
        server["extensions"]
    )
    scoring = client.get_model_metadata(MODEL)
    assert scoring["name"] == MODEL and scoring["versions"] == ["1"] and scoring["platform"] == "pytorch"
    assert scoring["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 1, 28, 28]}]
    assert scoring["outputs"][:2] == [
        {"name": "log_prob", "datatype": "FP64", "shape": [-1]},
        {"name": "bits_per_dim", "datatype": "FP64", "shape": [-1]},
    ]
    assert "dequantization_samples" in scoring["parameters"]["request_parameters"]
    sampling = client.get_model_metadata(f"{MODEL}.sample", "1")
    assert sampling["inputs"] == [{"name": "num_samples", "datatype": "INT64", "shape": [1]}]
    assert sampling["outputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 1, 28, 28]}]
    assert {"seed", "temperature"} <= set(sampling["parameters"]["request_parameters"])
    assert client.is_model_ready(MODEL) and client.is_model_ready(f"{MODEL}.sample", "1")
    assert not client.is_model_ready(MODEL, "2") and not client.is_model_ready("nothing")


def test_model_configuration_is_what_triton_tools_read(client, server):
    """perf_analyzer reads the batch dimension and the input shapes from the model configuration."""
    scoring = client.get_model_config(MODEL)
    assert scoring["max_batch_size"] == 256 and "dynamic_batching" in scoring
    assert scoring["input"] == [{"name": "images", "data_type": "TYPE_UINT8", "dims": [1, 28, 28]}]
    assert scoring["output"][0] == {
        "name": "log_prob",
        "data_type": "TYPE_FP64",
        "dims": [1],
        "reshape": {"shape": []},
    }
    sampling = client.get_model_config(f"{MODEL}.sample", "1")
    assert sampling["max_batch_size"] == 0 and "dynamic_batching" not in sampling
    assert sampling["input"] == [{"name": "num_samples", "data_type": "TYPE_INT64", "dims": [1]}]
    assert sampling["output"] == [{"name": "images", "data_type": "TYPE_UINT8", "dims": [-1, 1, 28, 28]}]
    with pytest.raises(utils.InferenceServerException, match="unknown model"):
        client.get_model_config("nothing")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_scores_equal_logprob(client, server, digits, binary):
    expected = logprob(server, digits)
    outputs = [http.InferRequestedOutput(name, binary_data=binary) for name in ("log_prob", "bits_per_dim")]
    result = client.infer(MODEL, [images_input(digits, binary)], outputs=outputs)
    for output in result.get_response()["outputs"]:
        assert ("parameters" in output) == binary  # binary_data_size only for binary outputs
    np.testing.assert_allclose(
        result.as_numpy("log_prob"), [x["log_prob"] for x in expected], rtol=0, atol=1e-6
    )
    np.testing.assert_allclose(
        result.as_numpy("bits_per_dim"), [x["bits_per_dim"] for x in expected], rtol=0, atol=1e-6
    )
    assert result.get_response()["model_version"] == "1"
    default = client.infer(MODEL, [images_input(digits, binary)])  # no outputs named: all, as binary
    np.testing.assert_array_equal(default.as_numpy("log_prob"), result.as_numpy("log_prob"))


def test_sampling_through_the_protocol_equals_sample_for_the_same_seed(client, server):
    count = http.InferInput("num_samples", [1], "INT64").set_data_from_numpy(np.array([3], dtype=np.int64))
    result = client.infer(f"{MODEL}.sample", [count], parameters={"seed": 11, "temperature": 0.8})
    images = result.as_numpy("images")
    assert images.shape == (3, 1, 28, 28) and images.dtype == np.uint8
    assert result.get_response()["parameters"] == {"seed": 11, "temperature": 0.8}
    body = {"model": MODEL, "num_samples": 3, "seed": 11, "temperature": 0.8, "format": "npy"}
    r = httpx.post(server.url + "/sample", json=body, timeout=60)
    np.testing.assert_array_equal(images, np.load(io.BytesIO(base64.b64decode(r.json()["npy"]))))
    drawn = client.infer(f"{MODEL}.sample", [], parameters={"num_samples": 2})  # the seed drawn, returned
    again = client.infer(
        f"{MODEL}.sample", [], parameters={"num_samples": 2, **drawn.get_response()["parameters"]}
    )
    np.testing.assert_array_equal(drawn.as_numpy("images"), again.as_numpy("images"))


def test_a_wrong_shape_raises_the_servers_message_in_the_clients_exception(client, digits):
    with pytest.raises(utils.InferenceServerException) as caught:
        client.infer(MODEL, [images_input(digits[:, 0], True)])
    assert caught.value.status() == "400"
    assert (
        "input 'images': expected shape [-1, 1, 28, 28] (-1: any size), got [5, 28, 28]"
        in caught.value.message()
    )
    with pytest.raises(utils.InferenceServerException) as unknown:
        client.infer("nothing", [images_input(digits, True)])
    assert unknown.value.status() == "404" and "unknown model 'nothing'" in unknown.value.message()


def test_protocol_requests_share_batches_with_logprob(client, server, digits):
    before = histogram(httpx.get(server.url + "/metrics").text, "flows_batch_requests", "logprob")
    plain: list = []
    other = threading.Thread(
        target=lambda: plain.append(logprob(server, digits))
    )  # gevent's client: this thread
    other.start()
    result = client.infer(MODEL, [images_input(digits, True)])
    other.join()
    np.testing.assert_allclose(
        result.as_numpy("log_prob"), [x["log_prob"] for x in plain[0]], rtol=0, atol=1e-6
    )
    after = histogram(httpx.get(server.url + "/metrics").text, "flows_batch_requests", "logprob")
    assert after["_count"] - before["_count"] == 1, (before, after)  # one batch held both requests
    assert after["_sum"] - before["_sum"] == 2


def test_load_and_unload_through_the_clients_repository_calls(client, server, digits):
    index = client.get_model_repository_index()
    assert {"name": MODEL, "version": "1", "state": "READY"}.items() <= index[
        [r["name"] for r in index].index(MODEL)
    ].items()
    client.unload_model(MODEL)
    assert not client.is_model_ready(MODEL) and not client.is_model_ready(f"{MODEL}.sample")
    with pytest.raises(utils.InferenceServerException) as caught:
        client.infer(MODEL, [images_input(digits, True)])
    assert caught.value.status() == "404" and "not loaded" in caught.value.message()
    client.load_model(MODEL)
    assert client.is_model_ready(MODEL)
    result = client.infer(MODEL, [images_input(digits, True)])
    np.testing.assert_allclose(
        result.as_numpy("log_prob"), [x["log_prob"] for x in logprob(server, digits)], atol=1e-6
    )
    with pytest.raises(utils.InferenceServerException) as refused:
        client.unload_model("finc-mnist")  # the default model
    assert refused.value.status() == "409" and "default model" in refused.value.message()

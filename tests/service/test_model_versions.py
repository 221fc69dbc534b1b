"""Model versions in-process: the folder layout, the version every response names, live loads that swap
versions or fail while the serving one goes on, unloading, polling, and `/v2` errors in the protocol's
shape."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from model.data import load_mnist
from service.app import create_app
from service.repository import scan, scan_model
from service.settings import Settings

from .conftest import SHIPPED
from .versions import copy_model, drop_version, weights_digest

MODEL, OTHER = "glow-mnist", "inverse-flow-mnist"
pytestmark = pytest.mark.skipif(
    not {MODEL, OTHER} <= set(SHIPPED), reason="needs the shipped glow-mnist and inverse-flow-mnist"
)


@contextmanager
def serving(models: Path, **settings) -> Iterator[TestClient]:
    options = dict(models=models, backend="torch", max_batch_images=8, torch_threads=1) | settings
    with TestClient(create_app(Settings(**options))) as client:
        yield client


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_mnist().test[:3].numpy()


def sample(client: TestClient, model: str = MODEL, seed: int = 5) -> tuple[str, np.ndarray]:
    r = client.post("/sample", json={"model": model, "num_samples": 2, "seed": seed, "format": "npy"})
    assert r.status_code == 200, r.text
    assert r.headers["x-model-version"] == r.json()["model_version"]
    return r.json()["model_version"], np.load(io.BytesIO(base64.b64decode(r.json()["npy"])))


def wait_until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def index_states(client: TestClient, name: str = MODEL) -> dict[str, str]:
    rows = client.post("/v2/repository/index").json()
    return {row["version"]: row["state"] for row in rows if row["name"] == name}


def ready_gauge(client: TestClient) -> dict[tuple[str, str], float]:
    return {
        (s.labels["model"], s.labels["version"]): s.value
        for family in text_string_to_metric_families(client.get("/metrics").text)
        for s in family.samples
        if s.name == "flows_model_ready"
    }


# -- the folder ---------------------------------------------------------------------------------------
def test_flat_folders_are_version_1_and_numbered_folders_are_versions(tmp_path):
    models = tmp_path / "models"
    flat = copy_model(models, MODEL)
    assert {v: p.path for v, p in scan_model(models, MODEL).items()} == {1: flat}
    drop_version(models, MODEL, 2)
    drop_version(models, MODEL, 10)
    for ignored in ("02", "v3", "0", "x"):
        (flat / ignored).mkdir()
        (flat / ignored / "config.json").write_text("{}")
    (flat / "4").mkdir()  # a version folder without a checkpoint in it (yet)
    assert list(scan_model(models, MODEL)) == [1, 2, 10]
    drop_version(models, MODEL, 1)  # a numbered 1/ wins over the flat files
    assert scan_model(models, MODEL)[1].path == flat / "1"
    (models / ".hidden").mkdir()
    (models / "empty").mkdir()
    assert list(scan(models)) == [MODEL]


# -- versions named everywhere --------------------------------------------------------------------------
def test_the_latest_version_serves_and_every_response_names_it(tmp_path, digits):
    models = tmp_path / "models"
    copy_model(models, MODEL)
    v2 = drop_version(models, MODEL, 2)
    image = digits[0, 0].tolist()
    with serving(models) as client:
        version, _ = sample(client)
        assert version == "2"
        calls = {
            "/logprob": {"images": [image]},
            "/encode": {"images": [image], "format": "array"},
            "/interpolate": {"start": {"seed": 1}, "end": {"seed": 2}, "steps": 2, "format": "npy"},
        }
        for path, body in calls.items():
            r = client.post(path, json=body)
            assert r.status_code == 200, r.text
            assert r.json()["model_version"] == "2" and r.headers["x-model-version"] == "2", path
        latents = client.post("/encode", json={"images": [image], "format": "array"}).json()["latents"]
        decoded = client.post("/decode", json={"latents": latents, "format": "npy"})
        assert decoded.json()["model_version"] == "2" and decoded.headers["x-model-version"] == "2"
        raw = client.post("/sample", json={"num_samples": 1, "seed": 1}, headers={"accept": "image/png"})
        assert raw.headers["content-type"] == "image/png" and raw.headers["x-model-version"] == "2"
        one = client.get(f"/models/{MODEL}")
        assert one.headers["x-model-version"] == "2"
        listed = client.get("/models").json()["models"][0]
        assert listed == one.json()
        assert listed["model_version"] == "2" and listed["weights_sha256"] == weights_digest(v2)
        assert listed["versions"] == [
            {
                "version": "1",
                "state": "UNAVAILABLE",
                "reason": "not loaded: version 2 serves",
                "weights_sha256": weights_digest(models / MODEL),
            },
            {"version": "2", "state": "READY", "reason": "", "weights_sha256": weights_digest(v2)},
        ]
        assert ready_gauge(client) == {(MODEL, "2"): 1.0}
        metrics = client.get("/metrics").text
        assert "process_resident_memory_bytes" in metrics and "process_cpu_seconds_total" in metrics
        meta = client.get(f"/v2/models/{MODEL}").json()
        assert meta["versions"] == ["2"] and meta["parameters"]["weights_sha256"] == weights_digest(v2)
        assert client.get(f"/v2/models/{MODEL}/versions/2/ready").status_code == 200
        not_served = client.get(f"/v2/models/{MODEL}/versions/1/ready")
        assert not_served.status_code == 503 and "version 2 serves" in not_served.json()["error"]


# -- live loads -------------------------------------------------------------------------------------------
def test_a_live_load_swaps_in_a_new_version_and_a_bad_one_fails_while_the_serving_one_goes_on(tmp_path):
    models = tmp_path / "models"
    copy_model(models, MODEL)
    with serving(models) as client:
        version, first = sample(client)
        assert version == "1" and index_states(client) == {"1": "READY"}
        drop_version(models, MODEL, 2)
        loaded = client.post(f"/v2/repository/models/{MODEL}/load")
        assert loaded.status_code == 200, loaded.text
        assert {row["version"]: row["state"] for row in loaded.json() if row["name"] == MODEL}["2"] == "READY"
        version, second = sample(client)
        assert version == "2" and not np.array_equal(first, second)  # other weights, other images
        wait_until(lambda: index_states(client) == {"1": "UNAVAILABLE", "2": "READY"})  # 1 released
        assert client.post(f"/v2/repository/models/{MODEL}/load").status_code == 200  # already serving: no-op
        assert sample(client)[0] == "2"

        drop_version(models, MODEL, 3, nan=True)
        failed = client.post(f"/v2/repository/models/{MODEL}.sample/load")  # either name loads the checkpoint
        assert failed.status_code == 400, failed.text
        message = failed.json()["error"]
        assert (
            "version 3 failed to load" in message and "non-finite" in message and "version 2 keeps" in message
        )
        version, again = sample(client)
        assert version == "2" and np.array_equal(again, second)
        rows = {
            row["version"]: row for row in client.post("/v2/repository/index").json() if row["name"] == MODEL
        }
        assert rows["3"]["state"] == "UNAVAILABLE" and "failed to load" in rows["3"]["reason"]

        back = client.post(f"/v2/repository/models/{MODEL}/load", json={"parameters": {"version": "1"}})
        assert back.status_code == 200, back.text
        version, rolled_back = sample(client)
        assert version == "1" and np.array_equal(rolled_back, first)
        missing = client.post(f"/v2/repository/models/{MODEL}/load", json={"parameters": {"version": 9}})
        assert missing.status_code == 404 and "no version 9" in missing.json()["error"]
        config = client.post(f"/v2/repository/models/{MODEL}/load", json={"parameters": {"config": "{}"}})
        assert config.status_code == 400 and "'config' is not supported" in config.json()["error"]


def test_unloading_stops_new_requests_and_loading_serves_the_model_again(tmp_path):
    models = tmp_path / "models"
    copy_model(models, MODEL)
    copy_model(models, OTHER)
    with serving(models, default_model=MODEL) as client:
        refused = client.post(f"/v2/repository/models/{MODEL}/unload")
        assert refused.status_code == 409 and "default model" in refused.json()["error"]
        assert client.post("/v2/repository/models/nothing/unload").status_code == 404
        gone = client.post(
            f"/v2/repository/models/{OTHER}/unload", json={"parameters": {"unload_dependents": False}}
        )
        assert gone.status_code == 200, gone.text
        r = client.post("/sample", json={"model": OTHER, "num_samples": 1})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_loaded", r.text
        assert "unloaded" in r.json()["error"]["message"]
        assert client.get(f"/v2/models/{OTHER}/ready").status_code == 503
        assert client.get(f"/v2/models/{OTHER}.sample/ready").status_code == 503
        assert client.get("/v2/models/nothing/ready").status_code == 404
        assert ready_gauge(client)[(OTHER, "1")] == 0.0
        assert client.get("/models").json()["unavailable"][OTHER].startswith("unloaded")
        assert index_states(client, OTHER) in ({"1": "UNLOADING"}, {"1": "UNAVAILABLE"})
        assert client.post(f"/v2/repository/models/{OTHER}/load").status_code == 200
        assert sample(client, OTHER)[0] == "1" and ready_gauge(client)[(OTHER, "1")] == 1.0
        only_ready = client.post("/v2/repository/index", json={"ready": True}).json()
        assert {row["name"] for row in only_ready} == {MODEL, f"{MODEL}.sample", OTHER, f"{OTHER}.sample"}


def test_polling_swaps_in_a_version_dropped_into_the_folder(tmp_path):
    models = tmp_path / "models"
    copy_model(models, MODEL)
    with serving(models, poll_models_s=0.2) as client:
        assert sample(client)[0] == "1"
        drop_version(models, MODEL, 2)
        wait_until(lambda: sample(client)[0] == "2")
        drop_version(models, MODEL, 3, nan=True)  # fails once, is not retried until its files change
        wait_until(lambda: index_states(client).get("3") == "UNAVAILABLE")
        time.sleep(0.5)
        assert sample(client)[0] == "2" and ready_gauge(client) == {(MODEL, "2"): 1.0}


# -- the protocol's errors --------------------------------------------------------------------------------
def test_v2_errors_are_the_protocols_error_object_with_the_usual_statuses(tmp_path, digits):
    models = tmp_path / "models"
    copy_model(models, MODEL)
    with serving(models, api_key="k", max_body_bytes=4096, max_samples_per_request=4) as client:
        key = {"x-api-key": "k"}
        assert client.get("/v2/health/live").json() == {"live": True, "ready": True}  # open
        assert client.get("/v2/health/ready").json() == {"live": True, "ready": True}
        cases = [
            (client.get("/v2"), 401, "API key"),
            (client.get("/v2/nowhere", headers=key), 404, "Not Found"),
            (client.get("/v2/models/nothing", headers=key), 404, "unknown model 'nothing'"),
            (client.get(f"/v2/models/{MODEL}/versions/x", headers=key), 404, "no version 'x'"),
            (client.post(f"/v2/models/{MODEL}/infer", content=b"{", headers=key), 400, "not valid JSON"),
            (client.post(f"/v2/models/{MODEL}/infer", content=b"x" * 5000, headers=key), 413, "exceeds"),
        ]
        too_many = {"inputs": [], "parameters": {"num_samples": 5}}
        cases.append(
            (client.post(f"/v2/models/{MODEL}.sample/infer", json=too_many, headers=key), 400, "limit of 4")
        )
        for response, status, words in cases:
            assert response.status_code == status, response.text
            body = response.json()
            assert set(body) == {"error"} and isinstance(body["error"], str) and words in body["error"], body
            assert response.headers["x-request-id"]
        request = {
            "inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 1, 28, 28], "data": [0] * 784}]
        }
        no_type = client.post(f"/v2/models/{MODEL}/infer", content=json.dumps(request).encode(), headers=key)
        assert no_type.status_code == 200, no_type.text  # no content type: accepted
        assert "content-type" not in no_type.request.headers
        # the rest of the API keeps its own error shape
        assert (
            client.post("/sample", json={"num_samples": 9}, headers=key).json()["error"]["code"]
            == "too_many_images"
        )


def test_v2_scores_equal_logprobs_with_dequantization_samples_and_ood(tmp_path, digits):
    models = tmp_path / "models"
    copy_model(models, MODEL)
    images = digits.tolist()
    with serving(models) as client:

        def infer(parameters: dict, outputs: list[str] | None = None) -> dict[str, list]:
            body = {
                "inputs": [{"name": "images", "datatype": "UINT8", "shape": [3, 1, 28, 28], "data": images}]
            }
            body["parameters"] = parameters
            if outputs:
                body["outputs"] = [{"name": name} for name in outputs]
            r = client.post(f"/v2/models/{MODEL}/infer", json=body)
            assert r.status_code == 200, r.text
            return {o["name"]: o["data"] for o in r.json()["outputs"]}

        for k in (1, 4):
            plain = client.post(
                "/logprob", json={"images": digits[:, 0].tolist(), "dequantization_samples": k}
            )
            expected = plain.json()["results"]
            got = infer({"dequantization_samples": k})
            assert list(got) == ["log_prob", "bits_per_dim"]
            np.testing.assert_allclose(got["log_prob"], [x["log_prob"] for x in expected], rtol=0, atol=1e-6)
            np.testing.assert_allclose(
                got["bits_per_dim"], [x["bits_per_dim"] for x in expected], rtol=0, atol=1e-6
            )
        ood = client.post(
            "/logprob", json={"images": digits[:, 0].tolist(), "ood": True, "ood_fpr": 0.01}
        ).json()
        for got in (
            infer({"ood": True, "ood_fpr": 0.01}),
            infer({"ood_fpr": 0.01}, ["is_outlier", "ood_score"]),
        ):
            assert got["is_outlier"] == [x["is_outlier"] for x in ood["results"]]
            np.testing.assert_allclose(got["ood_score"], [x["ood_score"] for x in ood["results"]], atol=1e-6)
        full = infer({"ood": True})
        assert list(full) == ["log_prob", "bits_per_dim", "ood_score", "log_prob_percentile", "is_outlier"]
        for parameters, words in (
            ({"ood": True, "dequantization_samples": 2}, "must be 1 with ood"),
            ({"dequantization_samples": 65}, "from 1 to 64"),
            ({"ood": "yes"}, "true or false"),
            ({"colour": 1}, "unknown parameter 'colour'"),
        ):
            body = {
                "inputs": [
                    {"name": "images", "datatype": "UINT8", "shape": [1, 1, 28, 28], "data": images[0]}
                ]
            }
            r = client.post(f"/v2/models/{MODEL}/infer", json={**body, "parameters": parameters})
            assert r.status_code == 400 and words in r.json()["error"], (parameters, r.text)

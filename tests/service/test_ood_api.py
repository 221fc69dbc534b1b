"""`POST /logprob` with `ood: true`, in-process and against a real uvicorn: the scores against the stored
statistics, both dataset directions, typicality, strict validation, and models without statistics."""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from model.complexity import compressed_bits
from model.data import load_fashion_mnist, load_mnist
from model.images import encode_png
from model.ood import DEFAULT_FPR, FPRS, STATS_FILE, read_ood_stats
from service.app import create_app
from service.settings import Settings

from .conftest import MODELS, SHIPPED

WITH_STATS = [name for name in SHIPPED if (MODELS / name / STATS_FILE).is_file()]
MNIST_MODEL = "finc-mnist" if "finc-mnist" in WITH_STATS else None
FASHION_MODEL = "finc-fashion-mnist" if "finc-fashion-mnist" in WITH_STATS else None
pytestmark = pytest.mark.skipif(not (MNIST_MODEL and FASHION_MODEL), reason="shipped statistics missing")


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return load_mnist().test[:8]


@pytest.fixture(scope="module")
def clothes() -> torch.Tensor:
    return load_fashion_mnist().test[:8]


def arrays(images: torch.Tensor) -> list:
    return images[:, 0].tolist()


def assert_error(response, status: int, code: str, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["code"] == code, body
    for word in words:
        assert word in body["message"], body["message"]


@pytest.mark.parametrize("model", WITH_STATS)
def test_ood_scores_are_the_statistics_applied_to_the_image(client, model, digits):
    stats = read_ood_stats(MODELS / model)
    plain = client.post("/logprob", json={"model": model, "images": arrays(digits[:4])})
    assert plain.status_code == 200, plain.text
    assert set(plain.json()) == {
        "model",
        "model_version",
        "num_dims",
        "dequantization_samples",
        "results",
        "timings",
    }
    assert all(set(r) == {"log_prob", "bits_per_dim"} for r in plain.json()["results"])  # as without ood
    r = client.post("/logprob", json={"model": model, "images": arrays(digits[:4]), "ood": True})
    assert r.status_code == 200, r.text
    body = r.json()
    log_probs = np.array([x["log_prob"] for x in body["results"]])
    assert log_probs.tolist() == [x["log_prob"] for x in plain.json()["results"]]  # same scores
    expected = -log_probs / math.log(2) - compressed_bits(digits[:4])
    assert np.allclose([x["ood_score"] for x in body["results"]], expected)
    assert np.allclose([x["log_prob_percentile"] for x in body["results"]], stats.percentile(log_probs))
    threshold = stats.threshold(DEFAULT_FPR)
    assert [x["is_outlier"] for x in body["results"]] == [bool(s > threshold) for s in expected]
    assert {x["ood_method"] for x in body["results"]} == {stats.method}
    assert body["ood"] == {
        "method": stats.method,
        "fpr": DEFAULT_FPR,
        "threshold": threshold,
        "dataset": stats.dataset,
        "test_images": stats.test_images,
    }
    typicality = body["typicality"]
    mean = float(-log_probs.mean())
    assert typicality["batch_size"] == typicality["reference_batch_size"] == 4
    assert typicality["mean_neg_log_prob"] == pytest.approx(mean)
    assert typicality["statistic"] == pytest.approx(abs(mean - stats.entropy))
    assert typicality["threshold"] == stats.typicality_thresholds[4][DEFAULT_FPR]
    assert typicality["is_outlier"] == (typicality["statistic"] > typicality["threshold"])
    one = client.post("/logprob", json={"model": model, "images": arrays(digits[:1]), "ood": True}).json()
    assert one["typicality"] is None  # one image: its is_outlier is the verdict
    alone, in_batch = one["results"][0], body["results"][0]  # equal up to float rounding across batch sizes
    assert alone["is_outlier"] == in_batch["is_outlier"] and alone["ood_method"] == in_batch["ood_method"]
    for key in ("log_prob", "ood_score", "log_prob_percentile"):
        assert alone[key] == pytest.approx(in_batch[key], abs=1e-2)


def test_multipart_fields_give_what_json_gives(client, digits):
    files = [("files", (f"{i}.png", encode_png(d), "image/png")) for i, d in enumerate(digits[:3])]
    form = {"model": MNIST_MODEL, "ood": "true", "ood_fpr": "0.01"}
    multipart = client.post("/logprob", files=files, data=form)
    assert multipart.status_code == 200, multipart.text
    body = {"model": MNIST_MODEL, "images": arrays(digits[:3]), "ood": True, "ood_fpr": 0.01}
    as_json = client.post("/logprob", json=body).json()
    assert multipart.json()["results"] == as_json["results"]
    assert multipart.json()["ood"]["fpr"] == 0.01 == as_json["ood"]["fpr"]
    assert as_json["ood"]["threshold"] == read_ood_stats(MODELS / MNIST_MODEL).threshold(0.01)
    off = client.post("/logprob", files=files, data={"model": MNIST_MODEL, "ood": "false"}).json()
    assert "typicality" not in off and all("ood_score" not in x for x in off["results"])


def test_the_corrected_score_flags_both_dataset_directions(client, digits, clothes):
    """Raw likelihood fails on Fashion-MNIST → MNIST (digits are *likelier* than clothes under the
    Fashion-MNIST model); the complexity-corrected score flags them all the same."""
    for model, own, other in ((FASHION_MODEL, clothes, digits), (MNIST_MODEL, digits, clothes)):
        r = client.post("/logprob", json={"model": model, "images": arrays(other), "ood": True}).json()
        flagged = [x["is_outlier"] for x in r["results"]]
        assert sum(flagged) >= 6, (model, flagged)
        assert r["typicality"]["is_outlier"], (model, r["typicality"])
        mine = client.post("/logprob", json={"model": model, "images": arrays(own), "ood": True}).json()
        assert sum(x["is_outlier"] for x in mine["results"]) <= 2, (model, mine["results"])
        if model == FASHION_MODEL:  # the failure the correction is for
            own_median = np.median([x["log_prob"] for x in mine["results"]])
            assert min(x["log_prob"] for x in r["results"]) > own_median


def test_typicality_flags_a_batch_of_constant_images_and_a_batch_of_the_likeliest(client, digits):
    stats = read_ood_stats(MODELS / MNIST_MODEL)
    blank = [[[0] * 28] * 28] * 16
    r = client.post("/logprob", json={"model": MNIST_MODEL, "images": blank, "ood": True}).json()
    assert r["typicality"]["is_outlier"] and r["typicality"]["batch_size"] == 16, r["typicality"]
    # the likeliest of 64 test digits: each typical alone, too likely together (the test is two-sided)
    pool = load_mnist().test[:64]
    scored = client.post("/logprob", json={"model": MNIST_MODEL, "images": arrays(pool)}).json()["results"]
    likeliest = pool[np.argsort([-x["log_prob"] for x in scored])[:16]]
    r = client.post("/logprob", json={"model": MNIST_MODEL, "images": arrays(likeliest), "ood": True}).json()
    assert r["typicality"]["is_outlier"], r["typicality"]
    assert r["typicality"]["mean_neg_log_prob"] < stats.entropy  # flagged for being too likely
    assert all(x["log_prob_percentile"] > 50 for x in r["results"])


BAD = [
    ({"ood": "true"}, "ood", "boolean"),
    ({"ood": 1}, "ood", "boolean"),
    ({"ood": None}, "ood", "boolean"),
    ({"ood": True, "ood_fpr": 0.2}, "ood_fpr", "0.01, 0.05 or 0.1"),
    ({"ood": True, "ood_fpr": "0.05"}, "ood_fpr", "0.01, 0.05 or 0.1"),
    ({"ood": True, "ood_fpr": True}, "ood_fpr", "0.01, 0.05 or 0.1"),
    ({"ood_fpr": 0.05}, "ood_fpr", "only used with ood: true"),
    ({"ood": False, "ood_fpr": 0.01}, "ood_fpr", "only used with ood: true"),
    ({"ood": True, "dequantization_samples": 4}, "dequantization_samples", "must be 1 with ood"),
]


@pytest.mark.parametrize("extra,field,words", BAD, ids=[json.dumps(b[0]) for b in BAD])
def test_bad_ood_fields_in_json_are_a_422_naming_the_field(client, digits, extra, field, words):
    body = {"model": MNIST_MODEL, "images": arrays(digits[:1]), **extra}
    assert_error(client.post("/logprob", json=body), 422, "invalid_request", field, words)


BAD_FORM = [
    ({"ood": "True"}, "ood", "true, false"),
    ({"ood": "1"}, "ood", "true, false"),
    ({"ood": ""}, "ood", "true, false"),
    ({"ood": "true", "ood_fpr": "0.050"}, "ood_fpr", ", ".join(f"{f:g}" for f in FPRS)),
    ({"ood": "true", "ood_fpr": "5%"}, "ood_fpr", "0.01, 0.05, 0.1"),
    ({"ood_fpr": "0.05"}, "ood_fpr", "only used with ood: true"),
    ({"ood": "true", "dequantization_samples": "2"}, "dequantization_samples", "must be 1 with ood"),
]


@pytest.mark.parametrize("form,field,words", BAD_FORM, ids=[json.dumps(b[0]) for b in BAD_FORM])
def test_bad_ood_fields_in_multipart_are_a_422_naming_the_field(client, digits, form, field, words):
    files = [("files", ("d.png", encode_png(digits[0]), "image/png"))]
    response = client.post("/logprob", files=files, data={"model": MNIST_MODEL, **form})
    assert_error(response, 422, "invalid_request", field, words)


def test_models_say_which_have_statistics_and_openapi_documents_the_fields(client):
    info = client.get(f"/models/{MNIST_MODEL}").json()["ood"]
    stats = read_ood_stats(MODELS / MNIST_MODEL)
    assert info["available"] and info["message"] is None and info["fprs"] == list(FPRS)
    assert info["entropy"] == stats.entropy and info["typicality_batch_sizes"][:3] == [1, 2, 4]
    spec = client.get("/openapi.json").json()
    content = spec["paths"]["/logprob"]["post"]["requestBody"]["content"]
    as_json = content["application/json"]["schema"]["properties"]
    assert as_json["ood"]["type"] == "boolean" and as_json["ood_fpr"]["anyOf"][0]["enum"] == list(FPRS)
    as_form = content["multipart/form-data"]["schema"]["properties"]
    assert as_form["ood"]["enum"] == ["true", "false"]
    assert as_form["ood_fpr"]["enum"] == ["0.01", "0.05", "0.1"]
    schemas = spec["components"]["schemas"]
    assert {"ood_score", "log_prob_percentile", "is_outlier", "ood_method"} <= set(
        schemas["OodImageScore"]["properties"]
    )
    assert {"ood", "typicality"} <= set(schemas["OodLogProbResponse"]["required"])


@pytest.fixture(scope="module")
def without_stats(tmp_path_factory) -> TestClient:
    """An app over two copies of a shipped checkpoint: one without statistics, one with another model's."""
    root = tmp_path_factory.mktemp("models")
    for name in ("bare", "stale"):
        shutil.copytree(MODELS / MNIST_MODEL, root / name, ignore=shutil.ignore_patterns(STATS_FILE))
    shutil.copy(MODELS / FASHION_MODEL / STATS_FILE, root / "stale" / STATS_FILE)
    settings = Settings(models=root, warmup=False, backend="torch", torch_threads=1)
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.mark.parametrize("name,words", [("bare", "has no out-of-distribution"), ("stale", "other weights")])
def test_ood_without_usable_statistics_is_a_422_naming_the_command(without_stats, digits, name, words):
    body = {"model": name, "images": arrays(digits[:2])}
    assert without_stats.post("/logprob", json=body).status_code == 200  # scoring itself still works
    command = f"flowserve ood {Path(without_stats.app.state.flows.settings.models) / name}"
    for response in (
        without_stats.post("/logprob", json={**body, "ood": True}),
        without_stats.post(
            "/logprob",
            files=[("files", ("d.png", encode_png(digits[0]), "image/png"))],
            data={"model": name, "ood": "true"},
        ),
    ):
        assert_error(response, 422, "ood_unavailable", words, command)
    info = without_stats.get(f"/models/{name}").json()["ood"]
    assert not info["available"] and command in info["message"]


def test_the_client_library_asks_for_ood_scores(real_server, digits):
    from service.client import FlowClient

    buffer = io.BytesIO(encode_png(digits[0]))
    with FlowClient(real_server.url) as client:
        body = client.logprob([buffer.getvalue()], MNIST_MODEL, ood=True, ood_fpr=0.1)
    assert body["ood"]["fpr"] == 0.1 and "ood_score" in body["results"][0]

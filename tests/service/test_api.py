"""The HTTP API, in-process and against a real uvicorn: results, formats and every kind of bad input."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from model import load_flow
from model.data import load_mnist
from model.images import encode_png

from .conftest import MODELS, SHIPPED

pytestmark = pytest.mark.skipif(not SHIPPED, reason="no shipped checkpoints")


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return load_mnist().test[:4]


def png(image: torch.Tensor) -> bytes:
    return encode_png(image)


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def assert_error(response, status: int, code: str, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["code"] == code, body
    assert body["request_id"] == response.headers["x-request-id"]
    for word in words:
        assert word in body["message"], body["message"]


@pytest.mark.parametrize("model", SHIPPED)
def test_sample_returns_png_images_of_the_model_shape(client, model):
    r = client.post("/sample", json={"model": model, "num_samples": 3, "seed": 7, "temperature": 0.7})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == model and body["seed"] == 7 and body["num_samples"] == 3
    assert len(body["images"]) == 3 and body["timings"]["total_ms"] > 0
    image = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
    assert image.size == (28, 28) and image.mode == "L"


@pytest.mark.parametrize("model", SHIPPED)
def test_logprob_matches_the_model_evaluated_directly(client, model, digits):
    r = client.post("/logprob", json={"model": model, "images": digits[:, 0].tolist()})
    assert r.status_code == 200, r.text
    got = torch.tensor([x["bits_per_dim"] for x in r.json()["results"]], dtype=torch.float64)
    with torch.inference_mode():
        expected = load_flow(MODELS / model).bits_per_dim(digits).double()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_logprob_accepts_multipart_png_jpeg_and_npy_uploads(client, digits):
    jpeg = io.BytesIO()
    Image.fromarray(digits[2, 0].numpy()).save(jpeg, format="JPEG", quality=100)
    files = [
        ("files", ("a.png", png(digits[0]), "image/png")),
        ("files", ("b.npy", npy(digits[1].numpy()), "application/octet-stream")),
        ("files", ("c.jpg", jpeg.getvalue(), "image/jpeg")),
    ]
    r = client.post("/logprob", files=files)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 3 and all(np.isfinite(x["log_prob"]) for x in results)
    same = client.post("/logprob", json={"images": [base64.b64encode(png(digits[0])).decode()]}).json()
    # float32 sums in batches of different sizes: equal to ~1e-7 relative (|log p| ~ 1e3 nats)
    assert abs(same["results"][0]["log_prob"] - results[0]["log_prob"]) < 1e-3


def test_samples_score_finite_log_likelihoods(client):
    r = client.post("/sample", json={"num_samples": 4, "seed": 1, "format": "npy"})
    images = np.load(io.BytesIO(base64.b64decode(r.json()["npy"])))
    assert images.dtype == np.uint8 and images.shape == (4, 1, 28, 28)
    scored = client.post("/logprob", json={"images": images[:, 0].tolist()}).json()
    assert all(np.isfinite(x["bits_per_dim"]) and x["bits_per_dim"] > 0 for x in scored["results"])


def test_raw_png_and_npy_when_the_accept_header_asks(client):
    r = client.post("/sample", json={"num_samples": 1, "seed": 3}, headers={"Accept": "image/png"})
    assert r.headers["content-type"] == "image/png" and r.headers["x-seed"] == "3"
    assert Image.open(io.BytesIO(r.content)).size == (28, 28)
    r = client.post("/sample", json={"num_samples": 5, "seed": 3}, headers={"Accept": "application/x-npy"})
    assert np.load(io.BytesIO(r.content)).shape == (5, 1, 28, 28)
    grid = client.post("/sample", json={"num_samples": 4, "format": "grid_png"}).json()["grid"]
    assert Image.open(io.BytesIO(base64.b64decode(grid))).size == (62, 62)


def test_the_same_seed_gives_the_same_images_and_no_seed_draws_one(client):
    def draw(body):
        r = client.post("/sample", json={**body, "format": "npy"})
        return r.json()

    a, b = draw({"num_samples": 3, "seed": 11}), draw({"num_samples": 3, "seed": 11})
    assert a["npy"] == b["npy"]
    c, d = draw({"num_samples": 2}), draw({"num_samples": 2})
    assert c["seed"] != d["seed"]


def test_models_endpoints_describe_every_model(client):
    body = client.get("/models").json()
    assert sorted(m["name"] for m in body["models"]) == SHIPPED
    info = client.get(f"/models/{SHIPPED[0]}").json()
    assert info["image_shape"] == [1, 28, 28] and info["num_parameters"] > 0
    assert info["backend"] and info["device"] == "cpu" and info["test_bits_per_dim"] > 0
    assert_error(client.get("/models/nope"), 404, "unknown_model", "nope", SHIPPED[0])


def test_health_metrics_and_docs(client):
    assert client.get("/health/live").json() == {"status": "alive"}
    assert client.get("/health/ready").json()["status"] == "ready"
    client.post("/sample", json={"num_samples": 1})
    text = client.get("/metrics").text
    for name in (
        "flows_requests_total",
        "flows_request_latency_seconds",
        "flows_queue_wait_seconds",
        "flows_inference_seconds",
        "flows_batch_images",
        "flows_queue_images",
        "flows_images_generated_total",
    ):
        assert name in text
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/sample", "/logprob", "/models", "/health/ready"} <= set(spec["paths"])


def test_request_ids_are_echoed_or_created(client):
    r = client.get("/health/live", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert len(client.get("/health/live").headers["x-request-id"]) == 32


BAD_SAMPLE = [
    ({"num_samples": 100000}, 422, "invalid_request", "num_samples"),
    ({"num_samples": 300}, 422, "too_many_images", "limit of 256"),
    ({"num_samples": 0}, 422, "invalid_request", "num_samples"),
    ({"temperature": -1}, 422, "invalid_request", "temperature"),
    ({"temperature": "hot"}, 422, "invalid_request", "temperature"),
    ({"format": "gif"}, 422, "invalid_request", "format"),
    ({"model": "cifar-glow"}, 404, "unknown_model", "cifar-glow"),
    ({"num_samples": 2, "colour": True}, 422, "invalid_request", "colour"),
]


@pytest.mark.parametrize("body,status,code,word", BAD_SAMPLE, ids=[str(b[0]) for b in BAD_SAMPLE])
def test_bad_sample_requests_get_a_clear_4xx(client, body, status, code, word):
    assert_error(client.post("/sample", json=body), status, code, word)


def test_malformed_json_is_a_400(client):
    bad = client.post("/sample", content=b'{"num_samples": 2', headers={"content-type": "application/json"})
    assert_error(bad, 400, "malformed_json")
    bad = client.post("/logprob", content=b"{images: [}", headers={"content-type": "application/json"})
    assert_error(bad, 400, "malformed_json")


def _bad_images(digits):
    rgb = io.BytesIO()
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(rgb, format="PNG")
    nan = digits[0, 0].numpy().astype(np.float32)
    nan[3, 3] = np.nan
    good = png(digits[0])
    return [
        (
            "wrong_shape",
            [("files", ("a.png", png(torch.zeros(1, 20, 28, dtype=torch.uint8)), "image/png"))],
            "expected shape (1, 28, 28)",
        ),
        ("wrong_channels", [("files", ("rgb.png", rgb.getvalue(), "image/png"))], "expected 1 channel"),
        (
            "truncated_png",
            [("files", ("ok.png", good, "image/png")), ("files", ("cut.png", good[:40], "image/png"))],
            "file 1 (cut.png)",
        ),
        ("not_an_image", [("files", ("x.png", b"hello world", "image/png"))], "not a readable"),
        ("nan", [("files", ("nan.npy", npy(nan), "application/octet-stream"))], "NaN"),
        (
            "out_of_range",
            [("files", ("big.npy", npy(np.full((28, 28), 300.0)), "application/octet-stream"))],
            "[0, 255]",
        ),
        (
            "fractional",
            [("files", ("f.npy", npy(np.full((28, 28), 0.5)), "application/octet-stream"))],
            "integers",
        ),
    ]


@pytest.mark.parametrize(
    "case",
    range(7),
    ids=[
        "wrong_shape",
        "wrong_channels",
        "truncated_png",
        "not_an_image",
        "nan",
        "out_of_range",
        "fractional",
    ],
)
def test_bad_images_name_the_first_offending_image(client, digits, case):
    _, files, word = _bad_images(digits)[case]
    assert_error(client.post("/logprob", files=files), 422, "invalid_image", word)


def test_bad_logprob_json_bodies(client):
    assert_error(client.post("/logprob", json={"images": []}), 422, "invalid_request", "images")
    assert_error(
        client.post("/logprob", json={"images": ["@@@"]}), 422, "invalid_image", "images[0]", "base64"
    )
    ragged = [[0] * 28] * 27 + [[0] * 5]
    assert_error(client.post("/logprob", json={"images": [ragged]}), 422, "invalid_image", "rectangular")
    assert_error(client.post("/logprob", json={"images": [[[0] * 28] * 28] * 257}), 422, "too_many_images")
    assert_error(
        client.post("/logprob", content=b"abc", headers={"content-type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    assert_error(
        client.post("/logprob", data={"model": "finc-mnist"}, files=[]), 415, "unsupported_media_type"
    )


def test_oversize_bodies_are_a_413(client):
    huge = {"images": ["A" * (2**20 + 10)]}
    assert_error(client.post("/logprob", json=huge), 413, "payload_too_large")

    def chunks():
        for _ in range(40):
            yield b"x" * 65536

    r = client.post("/logprob", content=chunks(), headers={"content-type": "application/json"})
    assert_error(r, 413, "payload_too_large")


def test_unknown_routes_and_methods_are_json_errors(client):
    assert_error(client.get("/nothing"), 404, "not_found")
    assert_error(client.get("/sample"), 405, "method_not_allowed")


def test_the_server_keeps_serving_after_bad_input(client):
    client.post("/logprob", content=b"\x00" * 100, headers={"content-type": "application/json"})
    client.post("/logprob", files=[("files", ("x.png", b"\x89PNG\r\n", "image/png"))])
    assert client.get("/health/ready").status_code == 200
    assert client.post("/sample", json={"num_samples": 2}).status_code == 200


def test_json_log_line_per_request(real_server, real):
    import time

    real.get("/health/live", headers={"X-Request-ID": "log-check-1"})
    deadline = time.monotonic() + 5  # the line is written just after the response is sent
    while True:
        lines = [line for line in real_server.output().splitlines() if "log-check-1" in line]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(lines) == 1
    record = json.loads(lines[0].split("service.access ", 1)[1])
    assert record["status"] == 200 and record["path"] == "/health/live" and record["duration_ms"] >= 0


def test_client_library_and_cli_against_a_real_server(real_server, tmp_path, digits):
    import subprocess
    import sys

    from service.client import FlowClient, FlowServiceError

    with FlowClient(real_server.url) as c:
        images, meta = c.sample(3, seed=9, temperature=0.5)
        assert images.shape == (3, 1, 28, 28) and meta["seed"] == 9
        scored = c.logprob([png(digits[0])])
        assert len(scored["results"]) == 1
        with pytest.raises(FlowServiceError) as err:
            c.sample(1, model="nope")
        assert err.value.status == 404 and err.value.code == "unknown_model"

    def run_client(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "service.client", "--url", real_server.url, *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    out = tmp_path / "grid.png"
    run = run_client("sample", "--n", "4", "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert Image.open(out).size == (62, 62)
    (tmp_path / "d.png").write_bytes(png(digits[1]))
    run = run_client("logprob", str(tmp_path / "d.png"))
    assert run.returncode == 0 and json.loads(run.stdout)["results"][0]["bits_per_dim"] > 0


def test_inference_threads_leave_a_core_to_the_event_loop_on_a_cpu(monkeypatch):
    from service.runtime import resolve_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    cpu = torch.device("cpu")
    assert resolve_threads(0, cpu) == 3
    assert resolve_threads(0, cpu, instances=2) == 1  # instances share the cores
    assert resolve_threads(0, cpu, instances=8) == 1
    assert resolve_threads(2, cpu) == 2  # an explicit number wins
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0})
    assert resolve_threads(0, cpu) == 1  # never zero threads
    assert resolve_threads(0, torch.device("cuda")) == 0  # a GPU keeps the library defaults
    monkeypatch.setenv("OMP_NUM_THREADS", "4")  # Ray sets it per replica: respected
    assert resolve_threads(0, cpu) == 0

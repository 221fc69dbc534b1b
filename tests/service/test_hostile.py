"""Hostile input and slow clients against a real uvicorn (raw sockets where a client library would refuse
the request): every answer is a JSON 4xx (or a clean 503), never a 500, a hang or a reset connection."""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from benchmarks.hostile import jpeg_declaring, npy_declaring, png_declaring
from service.errors import InternalError, error_body
from service.metrics import Metrics
from service.middleware import RequestContextMiddleware

from .conftest import MODELS, ROOT, SHIPPED, RealServer

pytestmark = pytest.mark.skipif(not SHIPPED, reason="no shipped checkpoints")
KEY = "s3cret-key"
HEADER_TIMEOUT, BODY_TIMEOUT = 1.5, 2.5


@pytest.fixture(scope="module")
def server() -> Iterator[RealServer]:
    args = [
        "--api-key",
        KEY,
        "--header-timeout-s",
        str(HEADER_TIMEOUT),
        "--body-timeout-s",
        str(BODY_TIMEOUT),
    ]
    with RealServer(*args, "--no-warmup") as running:
        yield running


BOMBS = {
    "png 30000x30000": png_declaring(30000, 30000),
    "png 10000x10000": png_declaring(10000, 10000),
    "jpeg 65000x65000": jpeg_declaring(65000, 65000),
    "npy (10**15,)": npy_declaring("<f8", "(1000000000000000,)"),
    "npy V100000000": npy_declaring("|V100000000", "(1,)"),
    "npy object": npy_declaring("|O", "(784,)"),
}


def _client(server: RealServer) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=30, headers={"X-API-Key": KEY})


@pytest.mark.parametrize("name", list(BOMBS))
def test_image_bombs_are_refused_before_decoding_and_the_connection_stays_usable(server, name):
    with _client(server) as client:
        r = client.post("/logprob", files=[("files", ("bomb", BOMBS[name], "application/octet-stream"))])
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "invalid_image" and "file 0" in r.json()["error"]["message"]
        assert client.get("/health/live").status_code == 200  # the same keep-alive connection


def test_latents_beyond_float32_are_refused_like_nan(server):
    with _client(server) as client:
        shapes = [m for m in client.get("/models").json()["models"] if m["name"] == "finc-mnist"]
        levels = [[[[1e300] * 14] * 14] * 2, [[[0.0] * 7] * 7] * 8] if shapes else []
        r = client.post("/decode", json={"model": "finc-mnist", "latents": levels})
        assert r.status_code == 422 and "float32" in r.json()["error"]["message"], r.text


def test_a_pixel_error_names_the_element_and_its_value(server):
    image = [[0] * 28 for _ in range(28)]
    image[3][5] = 300
    with _client(server) as client:
        message = client.post("/logprob", json={"images": [image]}).json()["error"]["message"]
    assert message.startswith("images.0: element 3.5 is '300'") and "more problem" not in message


def test_json_endpoints_answer_415_for_other_content_types_and_head_works(server):
    with _client(server) as client:
        r = client.post("/sample", content=b"num_samples=1", headers={"content-type": "text/plain"})
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
        for path in ("/", "/health/live", "/models"):
            head = client.head(path)
            assert head.status_code == 200 and head.content == b"", path


def test_the_key_guards_everything_but_liveness_and_readiness_before_the_body_is_read(server):
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        assert anonymous.get("/health/live").status_code == 200
        ready = anonymous.get("/health/ready").json()
        assert ready["status"] == "ready" and "models" not in ready  # no model names without the key
        for path in ("/models", "/openapi.json", "/docs", "/metrics"):
            r = anonymous.get(path)
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", path
        assert anonymous.get("/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert anonymous.get("/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    # 401 at once, though the declared 10 MB body never comes
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        raw.sendall(b"POST /sample HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        raw.sendall(b"Content-Length: 10000000\r\n\r\n{")
        assert raw.recv(4096).startswith(b"HTTP/1.1 401")


def _closed_after(sock: socket.socket) -> tuple[float, bytes]:
    started, data = time.monotonic(), b""
    while chunk := sock.recv(4096):
        data += chunk
    return time.monotonic() - started, data


SLOW = {
    "nothing sent": [b""],
    "partial head": [b"POST /sample HTTP/1.1\r\nHost: x\r\n"],
    "short body": [
        b"POST /sample HTTP/1.1\r\nHost: x\r\nX-API-Key: " + KEY.encode() + b"\r\n"
        b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"num'
    ],
    "unfinished chunked body": [
        b"POST /sample HTTP/1.1\r\nHost: x\r\nX-API-Key: " + KEY.encode() + b"\r\n"
        b'Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"num\r\n'
    ],
}


@pytest.mark.parametrize("name", list(SLOW))
def test_slow_clients_are_cut_off_at_their_deadline_and_others_are_served(server, name):
    limit = HEADER_TIMEOUT if "head" in name or "nothing" in name else BODY_TIMEOUT
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        for part in SLOW[name]:
            sock.sendall(part)
        with _client(server) as other:  # meanwhile another client is served as usual
            assert other.get("/health/live").status_code == 200
        elapsed, data = _closed_after(sock)
    assert data.startswith(b"HTTP/1.1 408"), data[:80]
    assert json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
    assert elapsed < limit + 2.0, elapsed


def test_dripped_headers_are_cut_off_at_the_head_deadline(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /health/live HTTP/1.1\r\n")
        try:
            for i in range(30):
                time.sleep(0.3)
                sock.sendall(b"X-Drip-%d: 1\r\n" % i)
        except OSError:  # the server closed the connection
            pass
        data = sock.recv(4096)
    assert data.startswith(b"HTTP/1.1 408") and time.monotonic() - started < HEADER_TIMEOUT + 2.0


def test_every_number_returned_is_finite_for_saturated_images(server):
    """An all-white image lies far outside MNIST: the split prior predicts σ ≈ 1e-55, beyond float32
    (docs/math.md). Its score, latents and log-det come back finite, computed in float64."""
    white = np.full((1, 28, 28), 255, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(white[0]).save(buf, "PNG")
    with _client(server) as client:
        for model in ("inverse-flow-mnist", "finc-mnist"):
            scores = client.post("/logprob", files=[("files", ("w.png", buf.getvalue(), "image/png"))],
                                 data={"model": model}).json()["results"][0]  # fmt: skip
            assert np.isfinite(scores["log_prob"]) and np.isfinite(scores["bits_per_dim"]), scores
            encoded = client.post("/encode", json={"model": model, "images": [white.tolist()]}).json()
            assert all(np.isfinite(v) for v in encoded["log_det"] + encoded["log_prob"]), encoded["log_det"]
            for level in encoded["latents"]:
                array = np.load(io.BytesIO(__import__("base64").b64decode(level)))
                assert np.isfinite(array).all()


def _poisoned_checkpoints(tmp_path: Path) -> Path:
    """The shipped models, one of them with a NaN weight."""
    models = tmp_path / "models"
    for name in SHIPPED[:2]:
        shutil.copytree(MODELS / name, models / name)
    weights = models / SHIPPED[0] / "model.safetensors"
    tensors = load_file(str(weights))
    first = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 1)
    tensors[first][0] = float("nan")
    save_file(tensors, str(weights))
    return models


def test_a_checkpoint_with_nan_weights_stops_start_up_naming_the_file_or_is_skipped(tmp_path):
    models = _poisoned_checkpoints(tmp_path)
    command = [sys.executable, "-m", "service", "--models", str(models), "--port", "0", "--no-warmup"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert f"{SHIPPED[0]}/model.safetensors" in done.stderr and "non-finite" in done.stderr
    with RealServer("--models", str(models), "--on-bad-model", "skip", "--no-warmup") as running:
        listed = httpx.get(running.url + "/models", timeout=30).json()
    assert [m["name"] for m in listed["models"]] == [SHIPPED[1]]
    assert "non-finite" in listed["unavailable"][SHIPPED[0]]


def test_an_empty_api_key_is_a_configuration_error():
    command = [sys.executable, "-m", "service", "--api-key", "", "--port", "0"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "api_key is empty" in done.stderr


async def test_an_exception_that_escapes_the_app_is_a_counted_json_500_with_the_request_id(caplog):
    async def broken(scope, receive, send):
        raise ZeroDivisionError("boom")

    class Inference:
        requests_in_flight = 0

    metrics = Metrics()
    app = RequestContextMiddleware(broken, metrics=metrics, max_body_bytes=1024, inference=Inference())
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/boom", "headers": [(b"x-request-id", b"abc")]}
    await app(scope, receive, send)
    assert sent[0]["status"] == 500 and (b"x-request-id", b"abc") in sent[0]["headers"]
    error = InternalError("internal server error")
    assert json.loads(sent[1]["body"]) == error_body(error.code, error.message, "abc")
    assert metrics.requests.labels(endpoint="other", status="500")._value.get() == 1
    assert "ZeroDivisionError: boom" in caplog.text  # the traceback is in the log, not the response

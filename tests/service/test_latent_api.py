"""The latent-space endpoints and /logprob's K, in-process and against a real uvicorn: exact round trips,
agreement with /logprob and /sample, interpolation paths, and every kind of bad input."""

from __future__ import annotations

import base64
import io
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from model import load_flow
from model.data import load_mnist
from model.interpolation import interpolate_latents

from .conftest import MODELS, SHIPPED
from .test_api import assert_error, png

pytestmark = pytest.mark.skipif(not SHIPPED, reason="no shipped checkpoints")
SHAPES = [[2, 14, 14], [8, 7, 7]]  # the shipped MNIST models' latents per level


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return load_mnist().test[:3]


def npy_array(b64: str) -> np.ndarray:
    return np.load(io.BytesIO(base64.b64decode(b64)), allow_pickle=False)


def npy_b64(array: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, array)
    return base64.b64encode(buf.getvalue()).decode()


def png64(image: torch.Tensor) -> str:
    return base64.b64encode(png(image)).decode()


def encode(client, images, **extra) -> dict:
    r = client.post("/encode", json={"images": images, **extra})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("model", SHIPPED)
def test_encode_then_decode_gives_the_images_back(client, model, digits):
    body = encode(client, [png64(d) for d in digits], model=model)
    assert body["latent_shapes"] == SHAPES and body["dequantization"] == "midpoint"
    latents = [npy_array(z) for z in body["latents"]]
    assert [z.shape for z in latents] == [(3, 2, 14, 14), (3, 8, 7, 7)] and latents[0].dtype == np.float32
    assert len(body["log_det"]) == 3 and body["timings"]["inference_ms"] > 0
    r = client.post("/decode", json={"model": model, "latents": body["latents"], "format": "npy"})
    assert r.status_code == 200, r.text
    assert np.array_equal(npy_array(r.json()["npy"]), digits.numpy())


def test_encode_matches_the_flow_and_hashed_encoding_matches_logprob(client, digits):
    model = SHIPPED[0]
    images = digits[:, 0].tolist()
    body = encode(client, images, model=model, dequantization="hashed", format="array")
    flow = load_flow(MODELS / model)
    with torch.inference_mode():
        from model.layers.preprocess import hashed_noise

        x = digits.float()
        latents, log_det = flow.encode(x + hashed_noise(x))
    for got, want in zip(body["latents"], latents, strict=True):
        torch.testing.assert_close(torch.tensor(got), want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        torch.tensor(body["log_det"], dtype=torch.float64), log_det.double(), atol=1e-2, rtol=1e-5
    )
    scored = client.post("/logprob", json={"model": model, "images": images}).json()["results"]
    for lp, s in zip(body["log_prob"], scored, strict=True):
        assert abs(lp - s["log_prob"]) < 1e-2  # float32 sums of ~1e3 nats, in different batches
    midpoint = encode(client, images, model=model)
    assert all(a != b for a, b in zip(midpoint["log_prob"], body["log_prob"], strict=True))


def test_decode_accepts_nested_arrays_single_images_and_raw_responses(client):
    gen = torch.Generator().manual_seed(0)
    latents = [torch.randn((1, *s), generator=gen) * 0.7 for s in SHAPES]
    as_npy = client.post("/decode", json={"latents": [npy_b64(z.numpy()) for z in latents], "format": "npy"})
    as_lists = client.post("/decode", json={"latents": [z[0].tolist() for z in latents], "format": "npy"})
    assert as_npy.status_code == as_lists.status_code == 200, as_lists.text
    assert np.array_equal(npy_array(as_npy.json()["npy"]), npy_array(as_lists.json()["npy"]))
    # the same latents /sample draws for a seed give /sample's image
    sampled = client.post("/sample", json={"num_samples": 1, "seed": 0, "temperature": 0.7, "format": "npy"})
    assert np.array_equal(npy_array(sampled.json()["npy"]), npy_array(as_npy.json()["npy"]))
    raw = client.post(
        "/decode", json={"latents": [z.tolist() for z in latents]}, headers={"Accept": "image/png"}
    )
    assert raw.headers["content-type"] == "image/png" and raw.content[:4] == b"\x89PNG"


def flat(latents: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([z.reshape(z.shape[0], -1) for z in latents], 1).double()


def test_interpolation_paths_end_exactly_at_their_endpoints():
    gen = torch.Generator().manual_seed(1)
    a = [torch.randn(1, *s, generator=gen) for s in SHAPES]
    b = [torch.randn(1, *s, generator=gen) for s in SHAPES]
    for method in ("linear", "spherical"):
        path, t = interpolate_latents(a, b, 7, method)
        assert t[0] == 0 and t[-1] == 1 and len(t) == 7
        assert all(
            torch.equal(p[0], z[0]) and torch.equal(p[-1], w[0]) for p, z, w in zip(path, a, b, strict=True)
        )
    slerp, _ = interpolate_latents(a, b, 5, "spherical")
    lerp, _ = interpolate_latents(a, b, 5, "linear")
    torch.testing.assert_close(flat(lerp)[2], (flat(a)[0] + flat(b)[0]) / 2, atol=1e-5, rtol=0)
    # slerp keeps the norm of typical Gaussian latents; the straight line's midpoint is ~1/√2 as long
    norms = flat(slerp).norm(dim=1)
    assert (norms > 0.95 * norms[0]).all() and flat(lerp)[2].norm() < 0.8 * norms[0]
    cos = float(flat(a)[0] @ flat(b)[0] / (flat(a)[0].norm() * flat(b)[0].norm()))
    omega = math.acos(cos)
    want = (math.sin(0.75 * omega) * flat(a)[0] + math.sin(0.25 * omega) * flat(b)[0]) / math.sin(omega)
    torch.testing.assert_close(flat(slerp)[1], want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("model", SHIPPED)
def test_interpolate_between_an_image_and_a_seed(client, model, digits):
    body = {
        "model": model,
        "start": {"image": png64(digits[0])},
        "end": {"seed": 4, "temperature": 0.6},
        "steps": 5,
        "format": "npy",
    }
    r = client.post("/interpolate", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    images = npy_array(out["npy"])
    assert images.shape == (5, 1, 28, 28) and out["t"] == [0, 0.25, 0.5, 0.75, 1]
    assert out["method"] == "spherical" and out["steps"] == 5
    assert np.array_equal(images[0], digits[0].numpy())  # the image's own latents decode to it
    end = client.post("/sample", json={"model": model, "num_samples": 1, "seed": 4, "temperature": 0.6})
    end_png = Image.open(io.BytesIO(base64.b64decode(end.json()["images"][0])))
    assert np.array_equal(images[-1], np.asarray(end_png)[None])
    two_seeds = client.post(
        "/interpolate",
        json={"model": model, "start": {"seed": 1}, "end": {"seed": 2}, "steps": 3, "method": "linear"},
    )
    assert two_seeds.status_code == 200 and len(two_seeds.json()["images"]) == 3


@pytest.mark.parametrize("model", SHIPPED)
def test_logprob_importance_weighted_bound(client, model, digits):
    images = digits[:2, 0].tolist()

    def scores(**extra):
        r = client.post("/logprob", json={"model": model, "images": images, **extra})
        assert r.status_code == 200, r.text
        return [x["log_prob"] for x in r.json()["results"]], r.json()["dequantization_samples"]

    one, k1 = scores()
    four, k4 = scores(dequantization_samples=4)
    assert (k1, k4) == (1, 4) and one != four
    with torch.inference_mode():
        flow = load_flow(MODELS / model)
        want_one, want_four = flow.log_prob(digits[:2]), flow.log_prob(digits[:2], samples=4)
    torch.testing.assert_close(torch.tensor(one, dtype=torch.float64), want_one.double(), atol=2e-3, rtol=0)
    torch.testing.assert_close(torch.tensor(four, dtype=torch.float64), want_four, atol=2e-3, rtol=0)
    if model != SHIPPED[0]:
        return
    # the same image and K, alone and as a multipart upload, in other batches: the same value
    alone = client.post(
        "/logprob", json={"model": model, "images": images[1:2], "dequantization_samples": 4}
    ).json()["results"][0]["log_prob"]
    assert abs(alone - four[1]) < 1e-2
    files = [("files", ("a.png", png(digits[0]), "image/png"))]
    form = client.post("/logprob", files=files, data={"model": model, "dequantization_samples": "4"})
    assert form.status_code == 200 and abs(form.json()["results"][0]["log_prob"] - four[0]) < 1e-2


BAD_LOGPROB_K = [
    ({"dequantization_samples": 0}, "dequantization_samples"),
    ({"dequantization_samples": 65}, "dequantization_samples"),
    ({"dequantization_samples": "many"}, "dequantization_samples"),
]


@pytest.mark.parametrize("extra,word", BAD_LOGPROB_K, ids=["zero", "65", "text"])
def test_bad_dequantization_samples(client, digits, extra, word):
    r = client.post("/logprob", json={"images": [digits[0, 0].tolist()], **extra})
    assert_error(r, 422, "invalid_request", word)
    files = [("files", ("a.png", png(digits[0]), "image/png"))]
    form = client.post("/logprob", files=files, data={k: str(v) for k, v in extra.items()})
    assert_error(form, 422, "invalid_request", word)


def _good_latents(n: int = 1) -> list[np.ndarray]:
    return [np.zeros((n, *s), np.float32) for s in SHAPES]


def _bad_decode_bodies() -> list[tuple[str, dict, int, str, str]]:
    good = _good_latents()
    nan = _good_latents()
    nan[1][0, 3, 2, 2] = np.nan
    inf = _good_latents()
    inf[0][0, 0, 0, 0] = np.inf
    return [
        (
            "three_levels",
            {"latents": [npy_b64(z) for z in [*good, good[1]]]},
            422,
            "invalid_latents",
            "2 levels",
        ),
        ("one_level", {"latents": [npy_b64(good[0])]}, 422, "invalid_latents", "got 1"),
        (
            "wrong_shape",
            {"latents": [npy_b64(np.zeros((1, 4, 14, 14), np.float32)), npy_b64(good[1])]},
            422,
            "invalid_latents",
            "latents[0]: expected shape (N, 2, 14, 14)",
        ),
        (
            "different_counts",
            {"latents": [npy_b64(_good_latents(2)[0]), npy_b64(good[1])]},
            422,
            "invalid_latents",
            "latents[1] holds 1 images but latents[0] holds 2",
        ),
        ("nan", {"latents": [npy_b64(z) for z in nan]}, 422, "invalid_latents", "latents[1]: contains NaN"),
        (
            "inf_in_json",  # Python's json writes Infinity, which the server's JSON parser accepts
            {"latents": [good[0].tolist(), (good[1] + np.inf).tolist()]},
            422,
            "invalid_latents",
            "latents[1]: contains NaN or infinite",
        ),
        (
            "inf0",
            {"latents": [npy_b64(z) for z in inf]},
            422,
            "invalid_latents",
            "latents[0]: contains NaN or inf",
        ),
        ("not_base64", {"latents": ["@@", "@@"]}, 422, "invalid_latents", "base64"),
        ("not_npy", {"latents": [base64.b64encode(b"hello").decode()] * 2}, 422, "invalid_latents", ".npy"),
        ("ragged", {"latents": [[[[1, 2], [3]]], good[1].tolist()]}, 422, "invalid_latents", "rectangular"),
        ("too_flat", {"latents": [[[1, 2], [3, 4]], good[1].tolist()]}, 422, "invalid_request", "latents.0"),
        ("text", {"latents": [npy_b64(np.array(["a"])), npy_b64(good[1])]}, 422, "invalid_latents", "dtype"),
        ("no_levels", {"latents": []}, 422, "invalid_request", "latents"),
        (
            "too_many",
            {"latents": [npy_b64(z.astype(np.float16)) for z in _good_latents(257)]},  # < 1 MiB
            422,
            "too_many_images",
            "limit of 256",
        ),
        (
            "unknown_model",
            {"model": "nope", "latents": [npy_b64(z) for z in good]},
            404,
            "unknown_model",
            "nope",
        ),
        (
            "bad_format",
            {"latents": [npy_b64(z) for z in good], "format": "gif"},
            422,
            "invalid_request",
            "format",
        ),
    ]


BAD_DECODE = _bad_decode_bodies()


@pytest.mark.parametrize("case", BAD_DECODE, ids=[c[0] for c in BAD_DECODE])
def test_bad_decode_requests_get_a_clear_4xx(client, case):
    _, body, status, code, word = case
    content = json.dumps(body)  # allow_nan: Python writes Infinity/NaN, which the server must refuse
    r = client.post("/decode", content=content, headers={"content-type": "application/json"})
    assert_error(r, status, code, word)


BAD_INTERPOLATE = [
    ({"start": {"seed": 1}, "end": {"seed": 2}, "steps": 300}, 422, "too_many_images", "steps 300"),
    ({"start": {"seed": 1}, "end": {"seed": 2}, "steps": 100000}, 422, "invalid_request", "steps"),
    ({"start": {"seed": 1}, "end": {"seed": 2}, "steps": 1}, 422, "invalid_request", "steps"),
    ({"start": {"seed": 1}, "end": {"seed": 2}, "method": "cubic"}, 422, "invalid_request", "method"),
    ({"start": {}, "end": {"seed": 2}}, 422, "invalid_request", "exactly one of 'image' or 'seed'"),
    ({"start": {"seed": 1, "image": "x"}, "end": {"seed": 2}}, 422, "invalid_request", "exactly one"),
    ({"start": {"seed": 1}}, 422, "invalid_request", "end"),
    ({"start": {"image": "@@@"}, "end": {"seed": 2}}, 422, "invalid_image", "start.image"),
    (
        {"start": {"seed": 1}, "end": {"image": [[0] * 5] * 5}},
        422,
        "invalid_image",
        "end.image: expected shape",
    ),
    ({"start": {"seed": 1}, "end": {"seed": 2, "temperature": 9}}, 422, "invalid_request", "temperature"),
    ({"model": "nope", "start": {"seed": 1}, "end": {"seed": 2}}, 404, "unknown_model", "nope"),
]


@pytest.mark.parametrize("body,status,code,word", BAD_INTERPOLATE, ids=[str(i) for i in range(11)])
def test_bad_interpolate_requests_get_a_clear_4xx(client, body, status, code, word):
    assert_error(client.post("/interpolate", json=body), status, code, word)


def test_bad_encode_requests_get_a_clear_4xx(client, digits):
    assert_error(client.post("/encode", json={"images": []}), 422, "invalid_request", "images")
    nan = digits[0, 0].numpy().astype(np.float32)
    nan[0, 0] = np.nan
    assert_error(
        client.post("/encode", json={"images": [png64(digits[0]), npy_b64(nan)]}),
        422,
        "invalid_image",
        "images[1]: contains NaN",
    )
    assert_error(
        client.post("/encode", json={"images": [png64(digits[0])], "dequantization": "uniform"}),
        422,
        "invalid_request",
        "dequantization",
    )
    assert_error(client.post("/encode", json={"images": [[[0] * 28] * 28] * 257}), 422, "too_many_images")
    assert_error(
        client.post("/encode", content=b"{", headers={"content-type": "application/json"}),
        400,
        "malformed_json",
    )


LAX = [  # the API contract: no booleans for integers, no strings for numbers, bounded strings
    ("/interpolate", {"start": {"seed": 1}, "end": {"seed": 2}, "steps": True}, "steps"),
    ("/interpolate", {"start": {"seed": 1}, "end": {"seed": 2}, "steps": "3"}, "steps"),
    ("/interpolate", {"start": {"seed": False}, "end": {"seed": 2}}, "start.seed"),
    ("/interpolate", {"start": {"seed": "1"}, "end": {"seed": 2}}, "start.seed"),
    ("/interpolate", {"start": {"seed": 2**53}, "end": {"seed": 2}}, "start.seed"),
    ("/interpolate", {"start": {"seed": 1, "temperature": "0.5"}, "end": {"seed": 2}}, "temperature"),
    ("/interpolate", {"start": {"seed": 1, "temperature": True}, "end": {"seed": 2}}, "temperature"),
    ("/interpolate", {"start": {"image": ""}, "end": {"seed": 2}}, "start.image"),
    ("/decode", {"latents": [[[[True] * 14] * 14] * 2, [[[0] * 7] * 7] * 8]}, "latents"),
    ("/decode", {"latents": [[[["0"] * 14] * 14] * 2, [[[0] * 7] * 7] * 8]}, "latents"),
    ("/decode", {"latents": ["", ""]}, "latents"),
    ("/encode", {"images": [[[True] * 28] * 28]}, "images"),
    ("/encode", {"images": [""]}, "images"),
    ("/encode", {"model": "m" * 129, "images": [[[0] * 28] * 28]}, "model"),
]


@pytest.mark.parametrize("path,body,word", LAX, ids=[f"{p[1:]}-{i}" for i, (p, _, _) in enumerate(LAX)])
def test_latent_endpoints_are_strict(inprocess, path, body, word):
    assert_error(inprocess.post(path, json=body), 422, "invalid_request", word)


def test_latent_endpoints_are_documented_and_counted(client, digits):
    spec = client.get("/openapi.json").json()
    assert {"/encode", "/decode", "/interpolate"} <= set(spec["paths"])
    for path in ("/encode", "/decode", "/interpolate"):  # every error status, with the error schema
        responses = spec["paths"][path]["post"]["responses"]
        assert {"400", "401", "404", "413", "422", "500", "503", "504"} <= set(responses)
        assert responses["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert "text/html" in spec["paths"]["/"]["get"]["responses"]["200"]["content"]
    assert spec["components"]["schemas"]["InterpolateRequest"]["properties"]["steps"]["maximum"] == 256
    schemas = spec["components"]["schemas"]
    assert schemas["InterpolateRequest"]["examples"] and schemas["DecodeRequest"]["examples"]
    logprob_json = spec["paths"]["/logprob"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "dequantization_samples" in json.dumps(logprob_json)
    client.post("/interpolate", json={"start": {"seed": 1}, "end": {"seed": 2}, "steps": 2})
    client.post("/encode", json={"model": "finc-mnist", "images": [digits[0, 0].tolist()]})
    text = client.get("/metrics").text
    assert 'flows_requests_total{endpoint="/interpolate",status="200"}' in text
    assert 'flows_batch_images_count{model="finc-mnist",op="encode"}' in text


def test_client_library_and_cli_latent_verbs(real_server, tmp_path, digits):
    from service.client import FlowClient, FlowServiceError

    with FlowClient(real_server.url) as c:
        latents, meta = c.encode([png(digits[0]), png(digits[1])])
        assert [z.shape for z in latents] == [(2, 2, 14, 14), (2, 8, 7, 7)] and len(meta["log_det"]) == 2
        images = c.decode(latents)
        assert np.array_equal(images, digits[:2].numpy())
        strip, meta = c.interpolate({"image": png(digits[0])}, {"seed": 3}, steps=4, method="linear")
        assert strip.shape == (4, 1, 28, 28) and np.array_equal(strip[0], digits[0].numpy())
        scored = c.logprob([png(digits[0])], dequantization_samples=4)
        assert scored["dequantization_samples"] == 4
        with pytest.raises(FlowServiceError) as err:
            c.decode([latents[0]])
        assert err.value.status == 422 and err.value.code == "invalid_latents"

    def run_client(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "service.client", "--url", real_server.url, *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    (tmp_path / "d.png").write_bytes(png(digits[2]))
    run = run_client("encode", str(tmp_path / "d.png"), "--out", str(tmp_path / "z.npz"))
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["latent_shapes"] == SHAPES
    run = run_client("decode", str(tmp_path / "z.npz"), "--out", str(tmp_path / "back.png"))
    assert run.returncode == 0, run.stderr
    grid = np.asarray(Image.open(tmp_path / "back.png"))  # a grid of one, with its 2-pixel border
    assert grid.shape == (32, 32) and np.array_equal(grid[2:30, 2:30], digits[2, 0].numpy())
    run = run_client(
        "interpolate",
        "--start-seed",
        "1",
        "--end",
        str(tmp_path / "d.png"),
        "--steps",
        "5",
        "--out",
        str(tmp_path / "strip.png"),
    )
    assert run.returncode == 0, run.stderr
    assert Image.open(tmp_path / "strip.png").size == (5 * 30 + 2, 32)
    run = run_client("logprob", str(tmp_path / "d.png"), "--dequantization-samples", "4")
    assert run.returncode == 0 and json.loads(run.stdout)["dequantization_samples"] == 4
    run = run_client("decode", str(tmp_path / "d.png"), "--out", str(tmp_path / "x.png"))
    assert run.returncode == 1 and "error" in run.stderr

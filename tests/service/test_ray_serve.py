"""The Ray Serve deployment on a real local Ray: two replicas, the plain server's results and errors, and a
replica killed by PID mid-traffic. Select with `pytest -m ray`; needs the `.[ray]` extra."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from model.data import load_mnist
from model.images import encode_png
from service.app import create_app
from service.settings import Settings

from .conftest import MODELS, SHIPPED, free_port
from .test_api import BAD_SAMPLE, _bad_images

ray = pytest.importorskip("ray", reason="needs the .[ray] extra")
serve = pytest.importorskip("ray.serve")
from ray.serve.schema import ServeDeploySchema  # noqa: E402

from service.ray_serve import (  # noqa: E402
    DEFAULT_CONFIG,
    PROXY_CALLBACK,
    FlowService,
    ReplicaLostAs503,
    ReplicaNotReady,
    build_app,
)

pytestmark = [pytest.mark.ray, pytest.mark.skipif(not SHIPPED, reason="no shipped checkpoints")]

# The replicas and the plain server get the same settings (torch backend: results comparable bit for bit).
SETTINGS = {
    "models": str(MODELS),
    "backend": "torch",
    "max_batch_images": 16,
    "max_wait_ms": 5,
    "max_body_bytes": 2**20,
    "warmup": False,
}
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", PROXY_CALLBACK[0]: PROXY_CALLBACK[1]}


def replica_pids() -> list[int]:
    """PIDs of this test's Serve replicas: descendants of this process whose title names the deployment."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, stack = [], [os.getpid()]
    while stack:
        for pid in children.get(stack.pop(), []):
            stack.append(pid)
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::ServeReplica:flows:flows"):
                    found.append(pid)
            except OSError:
                pass
    return sorted(found)


def running_replicas() -> int:
    app = serve.status().applications.get("flows")
    if app is None or app.status != "RUNNING":
        return 0
    return app.deployments["flows"].replica_states.get("RUNNING", 0)


@pytest.fixture(scope="module")
def serve_url() -> Iterator[str]:
    saved = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths have a length limit
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=100 * 2**20,
        _temp_dir=temp_dir,
        log_to_driver=False,
    )
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        deployment = FlowService.options(
            num_replicas=2,
            ray_actor_options={"num_cpus": 0.5},
            health_check_period_s=1,
            health_check_timeout_s=10,
        )
        settings = Settings(**SETTINGS).model_dump(mode="json")
        serve.run(deployment.bind(settings), name="flows", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def served(serve_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=serve_url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def plain() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(**SETTINGS))) as client:
        yield client


@pytest.fixture(scope="module")
def digit_pngs() -> list[bytes]:
    return [encode_png(d) for d in load_mnist().test[:4]]


def _images(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.load(io.BytesIO(base64.b64decode(response.json()["npy"])))


def _log_probs(response: httpx.Response) -> list[float]:
    assert response.status_code == 200, response.text
    return [r["log_prob"] for r in response.json()["results"]]


def test_the_shipped_serve_config_is_valid_for_serve():
    import yaml

    config = ServeDeploySchema.model_validate(yaml.safe_load(DEFAULT_CONFIG.read_text()))
    app = config.applications[0]
    assert app.import_path == "service.ray_serve:build_app" and app.deployments[0].name == "flows"
    assert build_app({**app.args, "models": str(MODELS)}) is not None
    with pytest.raises(ValueError, match="does not exist"):
        build_app({"models": "/no/such/dir"})


def test_two_replicas_answer_with_the_plain_servers_results(served, plain, digit_pngs):
    replicas = Counter()
    for model in SHIPPED:
        body = {"model": model, "num_samples": 3, "seed": 7, "format": "npy"}
        expected_images = _images(plain.post("/sample", json=body))
        files = [("files", (f"{i}.png", d, "image/png")) for i, d in enumerate(digit_pngs)]
        expected_lp = _log_probs(plain.post("/logprob", files=files, data={"model": model}))
        for _ in range(4):
            r = served.post("/sample", json=body)
            np.testing.assert_array_equal(_images(r), expected_images)
            replicas[r.headers["x-serve-replica"]] += 1
            r = served.post("/logprob", files=files, data={"model": model})
            np.testing.assert_allclose(_log_probs(r), expected_lp, rtol=1e-6)
            replicas[r.headers["x-serve-replica"]] += 1
            assert len(r.headers.get_list("x-request-id")) == 1
    assert len(replicas) == 2, replicas  # both replicas answered
    assert served.get("/health/ready").json() == plain.get("/health/ready").json()


def _same_error(plain_response, served_response) -> None:
    assert served_response.status_code == plain_response.status_code, served_response.text
    expected, got = plain_response.json()["error"], served_response.json()["error"]
    assert got["request_id"] == served_response.headers["x-request-id"]

    # PIL's message for an unreadable image names an object address, which differs between processes
    def normal(error: dict) -> dict:
        return {**error, "request_id": "", "message": re.sub(r"0x[0-9a-f]+", "0x", error["message"])}

    assert normal(got) == normal(expected)


def test_bad_inputs_get_the_plain_servers_4xx_json(served, plain):
    for body, *_ in BAD_SAMPLE:
        _same_error(plain.post("/sample", json=body), served.post("/sample", json=body))
    for _, files, _ in _bad_images(load_mnist().test[:2]):
        _same_error(plain.post("/logprob", files=files), served.post("/logprob", files=files))
    malformed = {"content": b'{"num_samples": 2', "headers": {"content-type": "application/json"}}
    _same_error(plain.post("/sample", **malformed), served.post("/sample", **malformed))
    text = {"content": b"abc", "headers": {"content-type": "text/plain"}}
    _same_error(plain.post("/logprob", **text), served.post("/logprob", **text))
    huge = {"images": ["A" * (2**20 + 10)]}
    _same_error(plain.post("/logprob", json=huge), served.post("/logprob", json=huge))
    _same_error(plain.get("/nothing"), served.get("/nothing"))
    _same_error(plain.get("/sample"), served.get("/sample"))


def test_a_replica_killed_mid_traffic_is_restarted_and_retrying_clients_lose_nothing(
    serve_url, plain, digit_pngs
):
    expected = _images(plain.post("/sample", json={"num_samples": 2, "seed": 5, "format": "npy"}))
    first_attempts: Counter[int] = Counter()
    failures: list[str] = []
    stop = threading.Event()

    def client_loop() -> None:
        """Retries on 503 (after Retry-After), as the API asks of clients; anything else is a failure."""
        with httpx.Client(base_url=serve_url, timeout=60) as client:
            while not stop.is_set():
                for attempt in range(20):
                    r = client.post("/sample", json={"num_samples": 2, "seed": 5, "format": "npy"})
                    if attempt == 0:
                        first_attempts[r.status_code] += 1
                    if r.status_code != 503:
                        break
                    assert r.json()["error"]["request_id"] == r.headers["x-request-id"]
                    time.sleep(float(r.headers.get("retry-after", "1")))
                if r.status_code != 200 or not np.array_equal(_images(r), expected):
                    failures.append(f"{r.status_code}: {r.text[:200]}")

    threads = [threading.Thread(target=client_loop) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        before = replica_pids()
        assert len(before) == 2, before
        killed_at = time.monotonic()
        os.kill(before[0], signal.SIGKILL)
        recovered_s = None
        while time.monotonic() - killed_at < 60:
            pids = replica_pids()
            if len(pids) == 2 and before[0] not in pids and running_replicas() == 2:
                recovered_s = time.monotonic() - killed_at
                break
            time.sleep(0.2)
        time.sleep(2)  # traffic on the restarted replica too
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    print(
        f"\nreplica kill: restarted and healthy after {recovered_s} s; first attempts {dict(first_attempts)} "
        f"(503 = failed without retry); failures with retry: {len(failures)}"
    )
    assert recovered_s is not None, "Serve did not restart the killed replica within 60 s"
    assert not failures, failures[:3]
    assert set(first_attempts) <= {200, 503}, first_attempts
    assert first_attempts[200] > 0


def test_the_health_check_fails_until_the_app_is_ready_and_again_once_it_drains():
    check_health = FlowService.func_or_class.check_health  # the method Serve calls on each replica
    replica = SimpleNamespace(_app=None)  # the replica's state (Serve's wrapper class needs a running Serve)
    with pytest.raises(ReplicaNotReady):
        check_health(replica)  # before Serve built the app
    replica._app = create_app(Settings(**SETTINGS))
    with pytest.raises(ReplicaNotReady):
        check_health(replica)  # built, models not loaded yet
    with TestClient(replica._app):  # runs the lifespan: load, then drain on exit
        check_health(replica)
    with pytest.raises(ReplicaNotReady):
        check_health(replica)


async def test_the_proxy_answers_503_for_a_request_its_replica_never_answered():
    async def replica_died(scope, receive, send):
        raise RuntimeError("ActorDiedError")

    async def answered(scope, receive, send):
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b"the app's own 500"})

    async def died_mid_response(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("ActorDiedError")

    def client(app) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=ReplicaLostAs503(app), raise_app_exceptions=True)
        return httpx.AsyncClient(transport=transport, base_url="http://serve")

    async with client(replica_died) as c:
        r = await c.post("/sample", json={}, headers={"x-request-id": "abc"})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["error"] == {
        "code": "replica_unavailable",
        "message": "the replica serving this request stopped; retry",
        "request_id": "abc",
    }
    async with client(answered) as c:
        r = await c.get("/")
    assert r.status_code == 500 and r.text == "the app's own 500"  # a response that came is passed on
    async with client(died_mid_response) as c:
        with pytest.raises(RuntimeError):  # too late for a 503: the status line is out
            await c.get("/")

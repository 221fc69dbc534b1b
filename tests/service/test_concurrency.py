"""Under load, against real uvicorn processes: batching, determinism, overload, deadlines, drain."""

from __future__ import annotations

import asyncio
import base64
import io
import signal
import time

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from model.hardware import native_bfloat16

from .conftest import SHIPPED, RealServer

pytestmark = pytest.mark.skipif(not SHIPPED, reason="no shipped checkpoints")


def histogram(metrics_text: str, name: str, op: str) -> dict[str, float]:
    """Summed samples of a Prometheus histogram for one operation, keyed by suffix and `le`."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.labels.get("op") != op:
                continue
            key = sample.name.removeprefix(name) + sample.labels.get("le", "")
            out[key] = out.get(key, 0.0) + sample.value
    return out


def batches(metrics_text: str, op: str) -> tuple[float, float]:
    """(batches executed, batches holding exactly one request) so far."""
    h = histogram(metrics_text, "flows_batch_requests", op)
    return h.get("_count", 0.0), h.get("_bucket1.0", 0.0)


def counter(metrics_text: str, name: str, **labels: str) -> float:
    return sum(
        s.value
        for f in text_string_to_metric_families(metrics_text)
        for s in f.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def test_32_concurrent_requests_all_succeed_and_share_batches(real_server):
    async with httpx.AsyncClient(base_url=real_server.url, timeout=60) as client:
        before = batches((await client.get("/metrics")).text, "sample")
        responses = await asyncio.gather(
            *(client.post("/sample", json={"num_samples": 2, "seed": i, "format": "npy"}) for i in range(32))
        )
        assert [r.status_code for r in responses] == [200] * 32
        after = batches((await client.get("/metrics")).text, "sample")
    executed, single = after[0] - before[0], after[1] - before[1]
    assert executed < 32 and single < executed  # some batches held more than one request


async def test_seeded_samples_do_not_depend_on_what_they_are_batched_with(real_server):
    body = {"num_samples": 3, "seed": 1234, "temperature": 0.8, "format": "npy"}
    async with httpx.AsyncClient(base_url=real_server.url, timeout=60) as client:
        alone = (await client.post("/sample", json=body)).json()["npy"]
        crowd = [
            client.post("/sample", json={**body, "seed": s, "num_samples": 1 + s % 5}) for s in range(12)
        ]
        responses = await asyncio.gather(*crowd[:6], client.post("/sample", json=body), *crowd[6:])
    assert all(r.status_code == 200 for r in responses)
    assert responses[6].json()["npy"] == alone
    assert base64.b64decode(alone)[:6] == b"\x93NUMPY"


def test_requests_one_at_a_time_run_on_the_event_loop_and_get_the_same_answers():
    """With nothing else in flight a short batch skips the inference thread (`--inline-max-ms`, here a
    budget no batch exceeds on a loaded CI machine); the answers are those the thread gives (the first
    batch, before the speed is known, and every batch of a server with inline off)."""
    body = {"num_samples": 2, "seed": 77, "format": "npy"}
    answers, inline = {}, {}
    for budget in ("1000", "0"):
        server = RealServer("--inline-max-ms", budget, "--no-warmup")
        with server, httpx.Client(base_url=server.wait_ready().url, timeout=60) as client:
            answers[budget] = [client.post("/sample", json=body).json()["npy"] for _ in range(4)]
            inline[budget] = counter(client.get("/metrics").text, "flows_inline_batches_total", op="sample")
    assert inline == {"1000": 3, "0": 0}
    assert len({*answers["1000"], *answers["0"]}) == 1


async def test_overload_answers_503_with_retry_after_and_every_accepted_request_completes():
    with RealServer("--max-batch-images", "4", "--max-queue-images", "8", "--max-wait-ms", "2") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            responses = await asyncio.gather(
                *(client.post("/sample", json={"num_samples": 4, "seed": i}) for i in range(48))
            )
            statuses = [r.status_code for r in responses]
            assert set(statuses) <= {200, 503} and statuses.count(503) > 0 and statuses.count(200) >= 2
            for r in responses:
                if r.status_code == 503:
                    assert r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "overloaded"
                else:
                    assert len(r.json()["images"]) == 4
            metrics = (await client.get("/metrics")).text
            assert counter(metrics, "flows_rejections_total", reason="queue_full") == statuses.count(503)
            assert (await client.post("/sample", json={"num_samples": 4})).status_code == 200


async def test_overload_status_can_be_429():
    with RealServer(
        "--max-batch-images", "2", "--max-queue-images", "2", "--overload-status", "429"
    ) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            responses = await asyncio.gather(
                *(client.post("/sample", json={"num_samples": 2}) for _ in range(32))
            )
        assert {r.status_code for r in responses} == {200, 429}


async def test_requests_past_their_deadline_get_504_and_the_server_recovers():
    with RealServer(
        "--max-batch-images", "64", "--request-timeout-s", "0.05", "--max-wait-ms", "1"
    ) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            responses = await asyncio.gather(
                *(
                    client.post(
                        "/sample",
                        json={
                            "num_samples": 64,
                            "model": "inverse-flow-mnist" if "inverse-flow-mnist" in SHIPPED else None,
                        },
                    )
                    for _ in range(6)
                )
            )
            codes = [r.status_code for r in responses]
            assert 504 in codes and set(codes) <= {200, 504}
            assert all(
                r.json()["error"]["code"] == "deadline_exceeded" for r in responses if r.status_code == 504
            )
            assert (await client.get("/health/ready")).status_code == 200


async def test_sigterm_stops_readiness_and_drains_accepted_requests():
    server = RealServer("--max-batch-images", "8").wait_ready()
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        inflight = [
            asyncio.ensure_future(client.post("/sample", json={"num_samples": 64, "seed": i}))
            for i in range(6)
        ]
        await asyncio.sleep(0.3)
        server.proc.send_signal(signal.SIGTERM)
        responses = await asyncio.gather(*inflight)
    assert [r.status_code for r in responses] == [200] * 6
    assert all(len(r.json()["images"]) == 64 for r in responses)
    deadline = time.monotonic() + 30
    while server.proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert server.stop() in (0, -signal.SIGTERM)
    assert "drained and stopped" in server.final_output


async def test_api_key_guards_everything_but_health():
    """With a key, liveness and readiness stay open; inference, models and metrics need it (Prometheus
    scrapers send it as a bearer token)."""
    with RealServer(env={"FLOWS_API_KEY": "s3cret"}) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            denied = await client.post("/sample", json={"num_samples": 1})
            assert denied.status_code == 401 and denied.json()["error"]["code"] == "unauthorized"
            assert (await client.get("/models", headers={"X-API-Key": "wrong"})).status_code == 401
            ok = await client.post("/sample", json={"num_samples": 1}, headers={"X-API-Key": "s3cret"})
            assert ok.status_code == 200
            assert (await client.get("/health/ready")).status_code == 200
            assert (await client.get("/metrics")).status_code == 401
            scrape = await client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
            assert scrape.status_code == 200 and "flows_requests_total" in scrape.text


async def test_a_client_that_disconnects_has_its_queued_work_cancelled():
    with RealServer("--max-batch-images", "8", "--max-wait-ms", "1") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            busy = asyncio.ensure_future(client.post("/sample", json={"num_samples": 128}))
            await asyncio.sleep(0.2)
            with pytest.raises(httpx.TimeoutException):
                await client.post("/sample", json={"num_samples": 128}, timeout=0.2)
            assert (await busy).status_code == 200
            await asyncio.sleep(0.5)
            metrics = (await client.get("/metrics")).text
        assert counter(metrics, "flows_rejections_total", reason="cancelled") > 0
        # Chunks of the abandoned request still queued never ran: fewer than 2 × 128 images computed.
        computed = histogram(metrics, "flows_batch_images", "sample")["_sum"]
        assert computed < 256


def _images(response: httpx.Response) -> np.ndarray:
    return np.load(io.BytesIO(base64.b64decode(response.json()["npy"])))


async def _alone_and_in_a_crowd(client: httpx.AsyncClient, body: dict) -> tuple[str, str]:
    """A request's images asked alone, then again in the middle of eight other requests."""
    alone = (await client.post("/sample", json=body)).json()["npy"]
    crowd = [client.post("/sample", json={**body, "seed": s, "num_samples": 1 + s % 4}) for s in range(8)]
    responses = await asyncio.gather(*crowd[:4], client.post("/sample", json=body), *crowd[4:])
    assert all(r.status_code == 200 for r in responses)
    return alone, responses[4].json()["npy"]


@pytest.mark.skipif(not native_bfloat16("cpu"), reason="no native bfloat16 on this CPU")
async def test_bf16_sampling_changes_samples_slightly_and_never_with_the_batch():
    """`--precision bf16`: the same seed gives the same images alone and in a crowd, a one-image request
    included (oneDNN computes a batch of one differently); they are close to float32's, not equal."""
    body = {"model": "finc-mnist", "num_samples": 3, "seed": 99, "temperature": 0.8, "format": "npy"}
    with RealServer("--precision", "bf16", "--no-warmup") as server:
        async with httpx.AsyncClient(base_url=server.wait_ready().url, timeout=60) as client:
            models = (await client.get("/models")).json()["models"]
            assert all(m["backend"]["sample"].endswith("+bf16") for m in models)
            for model in (m["name"] for m in models):
                for n in (1, 3):
                    alone, crowded = await _alone_and_in_a_crowd(
                        client, {**body, "model": model, "num_samples": n}
                    )
                    assert alone == crowded, (model, n)
            bf16 = _images(await client.post("/sample", json=body))
    with RealServer("--no-warmup") as server:
        async with httpx.AsyncClient(base_url=server.wait_ready().url, timeout=60) as client:
            f32 = _images(await client.post("/sample", json=body))
    diff = np.abs(f32.astype(int) - bf16.astype(int))
    assert 0 < diff.mean() < 8  # other samples, slightly: the mean pixel moves by under 8 of 255 levels


async def test_two_instances_answer_as_one_and_run_batches_side_by_side():
    """`--instances 2`: two batches of one model run at once (the metrics see batches overlap), and the
    answers are those of one instance."""
    body = {"num_samples": 8, "seed": 5, "format": "npy"}
    answers = {}
    for instances in ("1", "2"):
        with RealServer("--instances", instances, "--no-warmup", "--inline-max-ms", "0") as server:
            async with httpx.AsyncClient(base_url=server.wait_ready().url, timeout=60) as client:
                responses = await asyncio.gather(
                    *(client.post("/sample", json={**body, "seed": s}) for s in range(16))
                )
                assert all(r.status_code == 200 for r in responses)
                answers[instances] = [r.json()["npy"] for r in responses]
    assert answers["1"] == answers["2"]

"""The batcher on its own: batch closing, splitting, bounds, deadlines, cancellation, failures, drain, and
when a batch runs on the event loop instead of the inference thread."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from service.batching import Batcher, InferenceThread, chunk_sizes
from service.errors import BatchFailed, DeadlineExceeded, NotReady, Overloaded
from service.metrics import Metrics
from service.operations import Operation


class Recorder:
    """A real batch function (doubles its input) that records the batch sizes it was given."""

    def __init__(self, delay: float = 0.0, fail: bool = False, oom_above: int | None = None):
        self.sizes: list[int] = []
        self.threads: list[str] = []  # the thread each batch ran on
        self.delay, self.fail, self.oom_above = delay, fail, oom_above

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        n = inputs.shape[0]
        if self.oom_above is not None and n > self.oom_above:
            raise torch.OutOfMemoryError("simulated: batch too large for the device")
        if self.fail:
            raise RuntimeError("model exploded")
        if self.delay:
            import time

            time.sleep(self.delay)
        self.sizes.append(n)
        self.threads.append(threading.current_thread().name)
        return inputs * 2


class Run(Operation[torch.Tensor, torch.Tensor]):
    """An operation on plain tensor rows that predicts with the given batch function."""

    name = "op"

    def __init__(self, run):
        self.run = run

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        return self.run(batch)


def make(
    run, inference: InferenceThread | None = None, operation: type[Run] | None = None, **kwargs
) -> Batcher:
    options = dict(max_batch_images=8, max_wait_s=0.05, max_queue_images=64)
    options.update(kwargs)
    return Batcher("m", (operation or Run)(run), inference or InferenceThread(), Metrics(), **options)


def rows(start: int, n: int) -> torch.Tensor:
    return torch.arange(start, start + n, dtype=torch.float32)


async def test_concurrent_requests_share_a_batch_and_get_their_own_rows():
    run = Recorder()
    batcher = make(run)
    batcher.start()
    results = await asyncio.gather(*(batcher.submit(rows(10 * i, 2), 5.0) for i in range(4)))
    for i, r in enumerate(results):
        assert torch.equal(r.output, torch.arange(10 * i, 10 * i + 2) * 2.0)
    assert run.sizes == [8]  # four requests of 2 images closed one full batch
    await batcher.close()


async def test_a_lone_request_waits_at_most_max_wait():
    run = Recorder()
    batcher = make(run, max_wait_s=0.02)
    batcher.start()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    result = await batcher.submit(rows(0, 1), 5.0)
    assert loop.time() - t0 < 0.5 and 0.015 <= result.queue_s < 0.5
    await batcher.close()


async def test_requests_larger_than_a_batch_are_split_and_reassembled_in_order():
    run = Recorder()
    batcher = make(run, max_batch_images=4)
    batcher.start()
    result = await batcher.submit(rows(0, 11), 5.0)
    assert torch.equal(result.output, torch.arange(11) * 2.0)
    assert sorted(run.sizes) == [3, 4, 4]
    await batcher.close()


async def test_a_full_queue_rejects_the_whole_request_fast():
    run = Recorder(delay=0.2)
    batcher = make(run, max_batch_images=4, max_queue_images=8, overload_status=429, retry_after_s=3)
    batcher.start()
    first = asyncio.ensure_future(batcher.submit(rows(0, 4), 5.0))
    await asyncio.sleep(0.1)  # first batch is running; the queue is empty again
    queued = asyncio.ensure_future(batcher.submit(rows(0, 8), 5.0))
    await asyncio.sleep(0)
    with pytest.raises(Overloaded) as info:
        await batcher.submit(rows(0, 1), 5.0)
    assert info.value.status == 429 and info.value.headers["Retry-After"] == "3"
    assert torch.equal((await queued).output, torch.arange(8) * 2.0)  # accepted work is answered
    await first
    await batcher.close()


async def _busy(delay: float) -> tuple[Recorder, Batcher, asyncio.Future]:
    """A one-image-per-batch batcher already running a request that takes `delay`."""
    run = Recorder(delay=delay)
    batcher = make(run, max_batch_images=1, max_wait_s=0)
    batcher.start()
    running = asyncio.ensure_future(batcher.submit(rows(0, 1), 5.0))
    await asyncio.sleep(0.05)
    return run, batcher, running


async def test_expired_requests_are_dropped_before_compute():
    run, batcher, slow = await _busy(0.3)
    with pytest.raises(DeadlineExceeded):
        await batcher.submit(rows(100, 1), 0.1)
    await slow
    assert run.sizes == [1]  # the expired request never ran
    await batcher.close()


async def test_cancelled_requests_never_reach_the_model():
    run, batcher, busy = await _busy(0.2)
    gone = asyncio.ensure_future(batcher.submit(rows(50, 1), 5.0))
    await asyncio.sleep(0.01)
    gone.cancel()
    await busy
    await batcher.close()
    assert run.sizes == [1]


async def test_a_failing_batch_fails_every_request_in_it_and_the_batcher_keeps_serving():
    run = Recorder(fail=True)
    batcher = make(run)
    batcher.start()
    outcomes = await asyncio.gather(
        *(batcher.submit(rows(i, 2), 5.0) for i in range(3)), return_exceptions=True
    )
    assert all(isinstance(o, BatchFailed) for o in outcomes)
    run.fail = False
    assert torch.equal((await batcher.submit(rows(0, 2), 5.0)).output, torch.tensor([0.0, 2.0]))
    await batcher.close()


async def test_out_of_memory_halves_the_batch_and_retries():
    run = Recorder(oom_above=2)
    batcher = make(run)
    batcher.start()
    result = await batcher.submit(rows(0, 8), 5.0)
    assert torch.equal(result.output, torch.arange(8) * 2.0)
    assert run.sizes == [2, 2, 2, 2]
    await batcher.close()


async def test_close_finishes_queued_work_then_refuses_new_work():
    run = Recorder(delay=0.05)
    batcher = make(run, max_batch_images=2, max_wait_s=0)
    batcher.start()
    pending = [asyncio.ensure_future(batcher.submit(rows(i, 2), 5.0)) for i in range(5)]
    await asyncio.sleep(0)
    await batcher.close()
    results = await asyncio.wait_for(asyncio.gather(*pending), 1.0)
    assert [r.output.tolist() for r in results] == [[2.0 * i, 2.0 * i + 2] for i in range(5)]
    with pytest.raises(NotReady):
        await batcher.submit(rows(0, 1), 5.0)


async def test_a_request_that_would_expire_in_the_queue_is_refused_at_once():
    run = Recorder(delay=0.1)
    batcher = make(run, max_batch_images=1, max_wait_s=0, max_queue_images=64)
    batcher.start()
    await batcher.submit(rows(0, 1), 5.0)  # one batch measured: about 10 images/s
    running = asyncio.ensure_future(batcher.submit(rows(0, 1), 5.0))
    queued = [asyncio.ensure_future(batcher.submit(rows(i, 1), 5.0)) for i in range(5)]
    await asyncio.sleep(0)
    with pytest.raises(Overloaded) as info:  # 5+ queued images ≈ 0.5 s of work > a 0.2 s deadline
        await batcher.submit(rows(9, 1), 0.2)
    assert info.value.status == 503 and "deadline" in info.value.message
    assert all(r.output.shape == (1,) for r in await asyncio.gather(running, *queued))
    await batcher.close()


def _inline_batches(batcher: Batcher) -> float:
    return batcher.metrics.registry.get_sample_value("flows_inline_batches_total", {"model": "m", "op": "op"})


async def test_a_lone_short_batch_runs_on_the_event_loop_once_its_speed_is_known():
    run = Recorder()
    inference = InferenceThread(inline_max_s=1.0)
    inference.requests_in_flight = 1  # what the middleware counts: this one request
    batcher = make(run, inference, max_wait_s=0)
    batcher.start()
    for i in range(3):
        assert torch.equal((await batcher.submit(rows(i, 2), 5.0)).output, torch.arange(i, i + 2) * 2.0)
    await batcher.close()
    loop_thread = threading.current_thread().name
    # the first batch has no measured speed yet, so it goes to the thread; then the loop takes them
    assert run.threads[0].startswith("inference") and run.threads[1:] == [loop_thread, loop_thread]
    assert _inline_batches(batcher) == 2


async def test_a_batch_stays_on_the_inference_thread_when_the_loop_has_other_work():
    run = Recorder()
    inference = InferenceThread(inline_max_s=1.0)
    batcher = make(run, inference, max_wait_s=0)
    batcher.start()
    await batcher.submit(rows(0, 1), 5.0)  # speed measured
    inference.requests_in_flight = 2  # another request is being parsed or answered
    await batcher.submit(rows(0, 1), 5.0)
    inference.requests_in_flight = 1
    slow = InferenceThread(inline_max_s=1e-9)  # predicted longer than the budget
    slow_batcher = make(run, slow, max_wait_s=0)
    slow_batcher.start()
    for _ in range(2):
        await slow_batcher.submit(rows(0, 1), 5.0)
    await batcher.close()
    await slow_batcher.close()
    assert all(t.startswith("inference") for t in run.threads)
    assert _inline_batches(batcher) is None and _inline_batches(slow_batcher) is None


async def test_a_batch_stays_on_the_inference_thread_while_another_batcher_uses_it():
    fast, slow = Recorder(), Recorder(delay=0.3)
    inference = InferenceThread(inline_max_s=1.0)
    other = make(slow, inference, max_wait_s=0)
    batcher = make(fast, inference, max_wait_s=0)
    other.start()
    batcher.start()
    await batcher.submit(rows(0, 1), 5.0)  # speed measured
    busy = asyncio.ensure_future(other.submit(rows(0, 1), 5.0))
    await asyncio.sleep(0.05)  # the other batch is on the thread now
    assert inference.running == 1
    await batcher.submit(rows(0, 1), 5.0)
    await busy
    assert inference.running == 0
    await asyncio.gather(batcher.close(), other.close())
    assert all(t.startswith("inference") for t in fast.threads + slow.threads)


async def test_no_batch_runs_inline_when_inline_is_off():
    run = Recorder()
    batcher = make(run, InferenceThread(inline_max_s=0.0), max_wait_s=0)
    batcher.start()
    for i in range(3):
        await batcher.submit(rows(i, 1), 5.0)
    await batcher.close()
    assert all(t.startswith("inference") for t in run.threads)


async def test_a_request_split_into_chunks_never_holds_the_event_loop_for_more_than_one_batch():
    run = Recorder(delay=0.05)
    inference = InferenceThread(inline_max_s=1.0)
    inference.requests_in_flight = 1
    batcher = make(run, inference, max_wait_s=0, max_batch_images=8)
    batcher.start()
    await batcher.submit(rows(0, 8), 5.0)  # speed measured
    gaps, ticking = [], True

    async def ticker() -> None:  # what the event loop owes everyone else
        last = time.perf_counter()
        while ticking:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.ensure_future(ticker())
    result = await batcher.submit(rows(0, 40), 5.0)  # five chunks of 8
    ticking = False
    await tick
    await batcher.close()
    assert torch.equal(result.output, torch.arange(40) * 2.0)
    loop_thread = threading.current_thread().name
    assert run.threads[1:] == ["inference_0"] * 4 + [loop_thread]  # only the last chunk ran inline
    assert max(gaps) < 0.05 + 0.04  # one inline batch at most, never the five


class Weighted(Run):
    """`Run` whose rows cost what their value says (as /logprob's images cost their K)."""

    def row_costs(self, data: torch.Tensor) -> list[int]:
        return [int(v) for v in data.tolist()]


def test_chunks_cost_at_most_a_batch_and_keep_the_rows_in_order():
    assert chunk_sizes([1] * 11, 4) == [4, 4, 3]
    assert chunk_sizes([64, 64, 64], 64) == [1, 1, 1]  # a row costing a whole batch is a chunk alone
    assert chunk_sizes([3, 3, 100, 1], 8) == [2, 1, 1]
    assert chunk_sizes([], 8) == []


def _weighted_batcher(run: Recorder, max_queue_images: int) -> Batcher:
    """A batcher of 8 units per batch over an operation whose rows cost their value."""
    return Batcher(
        "m", Weighted(run), InferenceThread(), Metrics(), max_batch_images=8, max_wait_s=0,
        max_queue_images=max_queue_images,
    )  # fmt: skip


async def test_the_queue_and_the_deadline_count_the_work_not_the_images():
    run = Recorder(delay=0.05)
    batcher = _weighted_batcher(run, max_queue_images=16)
    batcher.start()
    heavy = torch.full((3,), 8.0)  # 3 images, 24 units: more than the queue holds
    with pytest.raises(Overloaded, match="this request 24"):
        await batcher.submit(heavy, 5.0)
    assert torch.equal((await batcher.submit(torch.full((2,), 8.0), 5.0)).output, torch.full((2,), 16.0))
    assert run.sizes == [1, 1]  # one image of 8 units per batch
    await batcher.close()


async def test_light_requests_interleave_with_a_heavy_one_instead_of_waiting_for_it():
    """A heavy request (10 chunks) queued first: requests sent after it finish long before it does."""
    run = Recorder(delay=0.02)
    batcher = _weighted_batcher(run, max_queue_images=512)
    batcher.start()
    finished: dict[str, float] = {}
    loop = asyncio.get_running_loop()

    async def timed(name: str, data: torch.Tensor) -> None:
        await batcher.submit(data, 30.0)
        finished[name] = loop.time()

    heavy = asyncio.ensure_future(timed("heavy", torch.full((10,), 8.0)))
    await asyncio.sleep(0.03)  # the heavy request's first chunk is running
    await asyncio.gather(*(timed(f"light{i}", torch.ones(1)) for i in range(3)), heavy)
    assert all(finished[f"light{i}"] < finished["heavy"] for i in range(3))
    # the light requests went in the batches right after the running one, not after the heavy's last
    assert max(finished[f"light{i}"] for i in range(3)) - finished["heavy"] < -0.1
    await batcher.close()

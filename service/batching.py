"""Server-side continuous batching: one `Batcher` per (model, operation); what an operation computes,
and how its requests form a batch and split back, is its `Operation` (service/operations.py).

When the model is idle, queued work is dispatched at once; while a batch runs, new requests queue and the
next batch takes all of them (up to `max_batch_images`) the moment the running one returns. With
`max_wait_s > 0` an idle worker instead holds a partial batch until it fills or its oldest request has
waited that long (a throughput knob for bursty traffic). The worker wakes on an event, never by polling.
Work is counted in cost units, the operation's measure of it (an image; an image scored at K
dequantisation samples costs K): batches close at `max_batch_images` units, the queue holds at most
`max_queue_images`, and requests costlier than a batch are split into chunks and reassembled. Batches take
requests fairly, never-served requests first, then the least recently served, at most one chunk of each
per round, so that a heavy request's chunks interleave with light requests instead of starving them. A
full queue rejects the whole request at once (accepted work is never dropped for space), and a request
whose estimated wait exceeds its deadline is refused at once too (503/429) rather than left to expire; the
estimate shares the queue fairly as the batches do (a request waits for up to its own cost of every other
queued request). Work that expires anyway is dropped before compute (504).
A request whose caller went away has its futures cancelled and its queued chunks are skipped. Inference
runs on the one inference thread (`InferenceThread`) under `torch.inference_mode()`, or on the event loop
itself when nothing else needs it; a CUDA out-of-memory halves the batch and retries.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

from .errors import BatchFailed, DeadlineExceeded, NotReady, Overloaded
from .metrics import Metrics
from .operations import Operation

__all__ = ["BatchResult", "Batcher", "InferenceThread", "chunk_sizes"]

log = logging.getLogger("service.batching")

In = TypeVar("In")
Out = TypeVar("Out")


class InferenceThread:
    """The inference threads every batcher shares (one per model instance), and when a batch may skip them.

    A batch normally runs on an inference thread, so that the event loop goes on parsing, decoding and
    answering requests meanwhile. With `instances` > 1 each batcher runs up to that many batches at once,
    one per thread, on the same (read-only) weights. When there is nothing else to go on with (no HTTP
    request in flight besides the batch's own, no batch on a thread, nothing queued behind it) and the
    batch is predicted to take at most `inline_max_s`, it runs on the event loop instead: no one waits
    for the loop, and the two thread hand-offs are saved (0.6-1.6 ms a request on a 2-core VM,
    `benchmarks/results/inline_ab.json`).
    """

    def __init__(self, inline_max_s: float = 0.0, instances: int = 1):
        if instances < 1:
            raise ValueError(f"instances must be at least 1, got {instances}")
        self.instances = instances
        self.executor = ThreadPoolExecutor(instances, thread_name_prefix="inference")
        self.inline_max_s = inline_max_s
        self.requests_in_flight = 0  # HTTP requests being handled, kept by the request middleware
        self.running = 0  # batches on the thread

    def inline(self, requests: int, predicted_s: float | None) -> bool:
        """Whether a batch of `requests` requests (or chunks), predicted to take `predicted_s`, runs on the
        event loop."""
        return (
            self.inline_max_s > 0
            and predicted_s is not None
            and predicted_s <= self.inline_max_s
            and self.running == 0
            and self.requests_in_flight <= requests
        )

    async def run(self, fn: Callable[[In], Out], batch: In) -> Out:
        self.running += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn, batch)
        finally:
            self.running -= 1

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True)


@dataclass
class BatchResult(Generic[Out]):
    """A request's output rows and how long it queued / computed (max over its chunks)."""

    output: Out
    queue_s: float
    inference_s: float


@dataclass
class _Work(Generic[In]):
    """One chunk of one request: `n` rows costing `cost` units."""

    item: In
    n: int
    cost: int
    request: int
    future: asyncio.Future
    enqueued: float
    deadline: float
    queue_s: float = 0.0
    inference_s: float = 0.0


def chunk_sizes(costs: list[int], budget: int) -> list[int]:
    """Rows per chunk so that each chunk costs at most `budget` (a row costlier than that is a chunk
    alone), keeping the rows in order."""
    sizes, rows, cost = [], 0, 0
    for c in costs:
        if rows and cost + c > budget:
            sizes.append(rows)
            rows, cost = 0, 0
        rows, cost = rows + 1, cost + c
    if rows:
        sizes.append(rows)
    return sizes


class Batcher(Generic[In, Out]):
    """Queues requests of one operation, runs `operation.predict` on batches of them, and returns each
    caller its rows."""

    def __init__(
        self,
        model: str,
        operation: Operation[In, Out],
        inference: InferenceThread,
        metrics: Metrics,
        *,
        max_batch_images: int,
        max_wait_s: float,
        max_queue_images: int,
        overload_status: int = 503,
        retry_after_s: int = 1,
    ):
        self.model, self.operation, self.op = model, operation, operation.name
        self.inference, self.metrics = inference, metrics
        self.max_batch_images, self.max_wait_s = max_batch_images, max_wait_s
        self.max_queue_images = max_queue_images
        self.overload_status, self.retry_after_s = overload_status, retry_after_s
        # Each request's queued chunks, never-served requests (in arrival order) apart from served ones (least
        # recently served first): the order in which batches take from them.
        self._fresh: OrderedDict[int, deque[_Work]] = OrderedDict()
        self._served: OrderedDict[int, deque[_Work]] = OrderedDict()
        self._queued_cost = 0
        self._requests = itertools.count()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None
        self._labels = {"model": model, "op": self.op}
        self._images_per_s: float | None = None  # moving average over executed batches
        self._backlog_since: float | None = None  # end of the last batch, if work was still queued then
        self._slots: asyncio.Semaphore | None = None  # batches in flight, up to the instances
        self._running: set[asyncio.Task] = set()

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._slots = asyncio.Semaphore(self.inference.instances)
            self._task = asyncio.get_running_loop().create_task(
                self._loop(), name=f"batcher-{self.model}-{self.op}"
            )

    async def close(self) -> None:
        """Stop accepting, finish everything already queued, then stop the worker."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None

    @property
    def queued_images(self) -> int:
        """Queued work in cost units (images, at K dequantisation samples K each)."""
        return self._queued_cost

    @property
    def _queued(self) -> bool:
        return bool(self._fresh or self._served)

    # -- client side ----------------------------------------------------------------------------------
    async def submit(self, item: In, timeout_s: float) -> BatchResult[Out]:
        """Queue one request and await its output rows."""
        costs = self.operation.row_costs(item)
        cost = sum(costs)
        if self._closing:
            raise NotReady("the server is shutting down")
        if self._queued_cost + cost > self.max_queue_images:
            self.metrics.rejections.labels(reason="queue_full").inc()
            raise Overloaded(
                f"queue for {self.model}/{self.op} is full ({self._queued_cost} units of work waiting, this "
                f"request {cost}, limit {self.max_queue_images}); retry later",
                status=self.overload_status,
                retry_after_s=self.retry_after_s,
            )
        capacity = self._images_per_s * self.inference.instances if self._images_per_s else None
        wait = self._fair_wait(cost)
        if capacity and wait / capacity > timeout_s:
            self.metrics.rejections.labels(reason="would_expire").inc()
            raise Overloaded(
                f"this request ({cost} units) would take about {wait / capacity:.1f} s to finish beside the "
                f"{self._queued_cost} units queued for {self.model}/{self.op}, more than its deadline of "
                f"{timeout_s:g} s; retry later",
                status=self.overload_status,
                retry_after_s=self.retry_after_s,
            )
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        request = next(self._requests)
        sizes = chunk_sizes(costs, self.max_batch_images)
        works: deque[_Work] = deque()
        start = 0
        for chunk, size in zip(self.operation.split(item, sizes), sizes, strict=True):
            chunk_cost = sum(costs[start : start + size])
            works.append(_Work(chunk, size, chunk_cost, request, loop.create_future(), now, now + timeout_s))
            start += size
        chunks = list(works)  # `works` is the request's queue: the batches take from it
        futures = [w.future for w in chunks]
        self._fresh[request] = works
        self._queued_cost += cost
        self.metrics.queue_depth.labels(**self._labels).set(self._queued_cost)
        self._wakeup.set()
        try:
            if len(futures) == 1:  # the common case: one future, no gather wrapper
                outputs = [await futures[0]]
            else:
                outputs = await asyncio.gather(*futures)
        except BaseException:
            for f in futures:  # caller gone or a chunk failed: skip whatever has not run yet
                f.cancel()
            raise
        return BatchResult(
            self.operation.join(outputs),
            max(w.queue_s for w in chunks),
            max(w.inference_s for w in chunks),
        )

    def _fair_wait(self, cost: int) -> int:
        """Work done before a new request of `cost` units finishes, if batches share fairly: its own, and
        up to as much of every queued request's."""
        queued = (sum(w.cost for w in chunks) for chunks in (*self._fresh.values(), *self._served.values()))
        return cost + sum(min(c, cost) for c in queued)

    # -- worker side ----------------------------------------------------------------------------------
    def _live_cost(self) -> int:
        queues = (*self._fresh.values(), *self._served.values())
        return sum(w.cost for q in queues for w in q if not w.future.done())

    def _oldest_enqueued(self) -> float:
        return min(q[0].enqueued for q in (*self._fresh.values(), *self._served.values()))

    def _next_chunk(self, chunks: deque[_Work], now: float) -> _Work | None:
        """The first chunk of a request that can still run, dropping cancelled and expired ones."""
        while chunks:
            work = chunks[0]
            if work.future.done():  # cancelled: the caller disconnected or another chunk failed
                self.metrics.rejections.labels(reason="cancelled").inc()
            elif now > work.deadline:
                self.metrics.rejections.labels(reason="deadline").inc()
                work.future.set_exception(DeadlineExceeded("request deadline passed while queued"))
            else:
                return work
            chunks.popleft()
            self._queued_cost -= work.cost
        return None

    def _take_batch(self) -> list[_Work]:
        """Up to `max_batch_images` units: rounds over the requests (never-served first, then the least
        recently served), one chunk of each per round, until the batch is full."""
        batch: list[_Work] = []
        cost = 0
        now = time.monotonic()
        took = True
        while took and cost < self.max_batch_images:
            took = False
            for group in (self._fresh, self._served):
                for request in list(group):
                    chunks = group[request]
                    work = self._next_chunk(chunks, now)
                    if work is not None and (not batch or cost + work.cost <= self.max_batch_images):
                        chunks.popleft()
                        self._queued_cost -= work.cost
                        batch.append(work)
                        cost += work.cost
                        took = True
                        del group[request]
                        if chunks:
                            self._served[request] = chunks  # least recently served goes last
                    elif work is None:
                        del group[request]
        self.metrics.queue_depth.labels(**self._labels).set(self._queued_cost)
        return batch

    async def _wait_for_batch(self) -> None:
        """Return when work is queued and either `max_wait_s` is 0 (continuous batching), a full batch is
        queued, or the oldest request has waited `max_wait_s`; or when closing."""
        while not self._closing:
            if not self._queued:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self.max_wait_s <= 0 or self._live_cost() >= self.max_batch_images:
                return
            remaining = self._oldest_enqueued() + self.max_wait_s - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    async def _loop(self) -> None:
        assert self._slots is not None
        while True:
            await self._wait_for_batch()
            if not self._queued:
                if self._closing:
                    await asyncio.gather(*self._running)
                    return
                continue
            await self._slots.acquire()  # a free instance: meanwhile new requests join the queue
            batch = self._take_batch()
            if not batch:
                self._slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[_Work]) -> None:
        """Run one batch and resolve its futures; releases its instance slot when done."""
        try:
            await self._run_batch(batch)
        finally:
            assert self._slots is not None
            self._slots.release()

    async def _run_batch(self, batch: list[_Work]) -> None:
        started = time.monotonic()
        for w in batch:
            w.queue_s = started - w.enqueued
            self.metrics.queue_wait.labels(**self._labels).observe(w.queue_s)
        inputs = self.operation.batch([w.item for w in batch])
        total = sum(w.n for w in batch)
        work_units = sum(w.cost for w in batch)
        predicted_s = work_units / self._images_per_s if self._images_per_s else None
        # Only the last queued batch may run inline: batches back to back on the loop would block it
        # for all of them (a request split into chunks), while one is bounded by the budget.
        inline = not self._queued and self.inference.inline(len(batch), predicted_s)
        try:
            if inline:
                output = self._execute(inputs)
            else:
                output = await self.inference.run(self._execute, inputs)
            returned = self.operation.size(output)
            if returned != total:
                raise RuntimeError(f"batch of {total} rows returned {returned}")
        except Exception:
            log.exception("batch of %d images for %s/%s failed", total, self.model, self.op)
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(BatchFailed("inference failed; see the server log"))
            return
        ended = time.monotonic()
        elapsed = ended - started
        # With a backlog, the time between batches (the event loop serving other work) is part of
        # the cost of draining the queue, so the rate is measured end to end.
        busy = ended - self._backlog_since if self._backlog_since is not None else elapsed
        self._backlog_since = ended if self._queued else None
        rate = work_units / max(busy, 1e-6)  # units of work per second
        self._images_per_s = rate if self._images_per_s is None else 0.8 * self._images_per_s + 0.2 * rate
        self.metrics.inference.labels(**self._labels).observe(elapsed)
        self.metrics.batch_images.labels(**self._labels).observe(total)
        self.metrics.batch_requests.labels(**self._labels).observe(len(batch))
        if inline:
            self.metrics.inline_batches.labels(**self._labels).inc()
        for w, rows in zip(batch, self.operation.unbatch(output, [w.n for w in batch]), strict=True):
            w.inference_s = elapsed
            if not w.future.done():
                w.future.set_result(rows)

    def _execute(self, batch: In) -> Out:
        """Run one batch; on CUDA out-of-memory, run it as two halves (recursively)."""
        try:
            with torch.inference_mode():
                return self.operation.predict(batch)
        except torch.OutOfMemoryError:
            n = self.operation.size(batch)
            if n == 1:
                raise
            torch.cuda.empty_cache()
            half = n // 2
            log.warning("CUDA out of memory on %d images for %s/%s: halving", n, self.model, self.op)
            first, second = self.operation.split(batch, [half, n - half])
            return self.operation.join([self._execute(first), self._execute(second)])

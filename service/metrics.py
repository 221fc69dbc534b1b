"""Prometheus metrics, one registry per app (so several apps in one process never collide), with the
standard `process_*` metrics (CPU time, resident memory, open files) on it."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_PER_BATCHER = ["model", "op"]  # the labels of everything a batcher measures


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
        self.requests = Counter(
            "flows_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "flows_request_latency_seconds",
            "HTTP request latency",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        seconds = {"buckets": _LATENCY_BUCKETS, "registry": r}
        counts = {"buckets": _BATCH_BUCKETS, "registry": r}
        self.queue_wait = Histogram(
            "flows_queue_wait_seconds", "time a request waited for its batch", _PER_BATCHER, **seconds
        )
        self.inference = Histogram(
            "flows_inference_seconds", "time of one batch's inference", _PER_BATCHER, **seconds
        )
        self.batch_images = Histogram(
            "flows_batch_images", "images per executed batch", _PER_BATCHER, **counts
        )
        self.batch_requests = Histogram(
            "flows_batch_requests", "requests (or request chunks) per executed batch", _PER_BATCHER, **counts
        )
        self.inline_batches = Counter(
            "flows_inline_batches",
            "batches run on the event loop (nothing else to do) instead of the inference thread",
            _PER_BATCHER,
            registry=r,
        )
        self.queue_depth = Gauge(
            "flows_queue_images", "images waiting in the queue", _PER_BATCHER, registry=r
        )
        self.rejections = Counter(
            "flows_rejections", "requests rejected or dropped, by reason", ["reason"], registry=r
        )
        self.images_generated = Counter("flows_images_generated", "images sampled", ["model"], registry=r)
        self.images_scored = Counter("flows_images_scored", "images scored", ["model"], registry=r)
        self.model_ready = Gauge(
            "flows_model_ready",
            "1 for the version of each model that takes new requests (service/registry.py)",
            ["model", "version"],
            registry=r,
        )

"""Prometheus metrics, kept in a per-app CollectorRegistry so several apps (tests) can live in one process.

Exposed at GET /metrics: request latency per route, inference batch sizes and times, queue depth and
gallery size per collection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# Finer than request latency: the stages of one query run from tens of microseconds to seconds under overload.
_STAGE_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    10.0,
    30.0,
)
QUERY_STAGES = ("receive", "decode", "embed", "search", "respond")


class ServiceMetrics:
    """All instruments of one app; also the batcher's BatchObserver."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.request_latency = Histogram(
            "reid_request_duration_seconds",
            "HTTP request latency",
            ["method", "route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "reid_inference_batch_size",
            "Crops per inference batch",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.inference_seconds = Histogram(
            "reid_inference_seconds",
            "Model time per inference batch",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge("reid_queue_depth", "Crops waiting for inference", registry=self.registry)
        self.gallery_size = Gauge("reid_gallery_size", "Items per collection", ["collection"], registry=self.registry)
        self.crops_embedded = Counter("reid_crops_embedded", "Crops embedded", registry=self.registry)
        self.query_stages = Histogram(
            "reid_query_stage_seconds",
            "POST /query time per stage: receive (body, multipart, routing), decode (incl. the wait for a decode "
            "thread), embed (batcher queue and inference), search (search queue and search), respond (JSON body)",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        self._stage_children = [self.query_stages.labels(stage=name) for name in QUERY_STAGES]
        self.rejected = Counter(
            "reid_rejected_requests", "Requests refused before inference", ["reason"], registry=self.registry
        )
        self.requests_in_flight = Gauge(
            "reid_requests_in_flight", "HTTP requests being handled right now", registry=self.registry
        )
        self._in_flight = 0
        self._idle = asyncio.Event()  # set while no request is being handled
        self._idle.set()
        self.abandoned = Counter(
            "reid_abandoned_requests",
            "Requests whose client went away while their crops waited for inference (those crops are dropped)",
            registry=self.registry,
        )

    def request_started(self) -> None:
        self._in_flight += 1
        self._idle.clear()
        self.requests_in_flight.inc()

    def request_finished(self) -> None:
        self._in_flight -= 1
        self.requests_in_flight.dec()
        if self._in_flight == 0:
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no HTTP request is being handled (False when ``timeout_s`` ran out first)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference_seconds.observe(seconds)
        self.crops_embedded.inc(size)

    def observe_query_stages(self, *marks: float) -> None:
        """perf_counter marks at the request's start and at the end of each QUERY_STAGES stage (len + 1 of them)."""
        for child, begin, end in zip(self._stage_children, marks[:-1], marks[1:], strict=True):
            child.observe(end - begin)

    def set_queue_depth(self, depth: int) -> None:
        self.queue_depth.set(depth)

    def set_gallery_size(self, collection: str, size: int) -> None:
        self.gallery_size.labels(collection=collection).set(size)

    def forget_collection(self, collection: str) -> None:
        with contextlib.suppress(KeyError):
            self.gallery_size.remove(collection)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetricsMiddleware:
    """Times every HTTP request; labels by route template (not raw path) to keep label cardinality bounded."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        # The query route times its stages from here (request.state.request_start).
        scope.setdefault("state", {})["request_start"] = start

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.metrics.request_started()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.request_finished()
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.request_latency.labels(scope["method"], template, str(status)).observe(
                time.perf_counter() - start
            )

"""Dynamic batcher: crops from every concurrent request share one bounded queue and one inference thread.

The worker takes the oldest crop, waits up to ``max_delay_s`` (counted from when that crop arrived) for more,
and runs batches of at most ``max_batch_size`` crops. Results go back to each request's event loop through
``loop.call_soon_threadsafe``. A request whose coroutine was cancelled (client gone) is skipped at batch
time (its queued crops are dropped, not embedded) and never receives a result, without disturbing the other
requests sharing its batch. The routes cancel a request's wait when its client disconnects (service/http/routes.py).
The requests a batch completes get their results in one callback per event loop, in queue order.

    batcher = DynamicBatcher(embedder.embed_batch, max_batch_size=32, max_delay_s=0.005, max_queue=1024)
    batcher.start()
    embeddings = await batcher.embed([crop_a, crop_b])   # (2, D) float32, in input order
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from service.core.errors import NotReadyError, OverloadedError

logger = logging.getLogger(__name__)

EmbedFn = Callable[[np.ndarray], np.ndarray]


class BatchObserver(Protocol):
    """Where the batcher reports what it does (the Prometheus metrics in production)."""

    def observe_batch(self, size: int, seconds: float) -> None: ...

    def set_queue_depth(self, depth: int) -> None: ...


@dataclass(eq=False)
class _Job:
    """One request's crops; results fill in as the batches containing them finish."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[np.ndarray]
    size: int
    remaining: int
    results: list[np.ndarray | None] = field(default_factory=list)
    failed: bool = False

    def abandoned(self) -> bool:
        # future.cancelled() is only read here; a stale answer just costs one wasted inference slot.
        return self.failed or self.future.cancelled()


@dataclass(eq=False)
class _Item:
    job: _Job
    slot: int
    pixels: np.ndarray
    enqueued_at: float


def _set_result(future: asyncio.Future[np.ndarray], value: np.ndarray) -> None:
    if not future.done():
        future.set_result(value)


def _set_results(results: list[tuple[asyncio.Future[np.ndarray], np.ndarray]]) -> None:
    for future, value in results:
        _set_result(future, value)


def _set_exception(future: asyncio.Future[np.ndarray], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class DynamicBatcher:
    """Bounded crop queue + one worker thread calling ``embed_fn`` on (B, 3, H, W) uint8 -> (B, D) float32."""

    def __init__(
        self,
        embed_fn: EmbedFn,
        *,
        max_batch_size: int,
        max_delay_s: float,
        max_queue: int,
        retry_after_s: int = 1,
        observer: BatchObserver | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_delay_s < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1 and max_delay_s >= 0")
        self._embed_fn = embed_fn
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self._observer = observer
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.batches_run = 0

    @property
    def depth(self) -> int:
        """Crops waiting for inference (not counting the batch being computed)."""
        return len(self._queue)

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("batcher already started")
        self._thread = threading.Thread(target=self._run, name="reid-inference", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0, *, drain: bool = False) -> None:
        """Refuse new work, finish the batch in flight and join the worker.

        drain=False fails whatever is still queued at once; drain=True (graceful shutdown) lets the worker embed
        it first, and fails only what is left when ``timeout`` runs out.
        """
        with self._cond:
            self._stopping = True
            leftovers = [] if drain else list(self._queue)
            if not drain:
                self._queue.clear()
            pending = len(self._queue)
            self._cond.notify_all()
        if drain and pending:
            logger.info("draining %d queued crops before stopping", pending)
        for item in leftovers:
            self._fail(item.job, NotReadyError("the service is shutting down"))
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("inference worker did not stop within %.1f s", timeout)
        with self._cond:
            leftovers = list(self._queue)
            self._queue.clear()
        for item in leftovers:
            self._fail(item.job, NotReadyError("the service is shutting down"))
        self._report_depth(0)

    def ensure_capacity(self, count: int) -> None:
        """Refuse early (OverloadedError) when ``count`` more crops would not fit in the queue right now.

        A cheap pre-check before decoding uploads, so refusing under overload costs little; ``embed`` still
        makes the binding check, since the queue may fill up while the request decodes.
        """
        depth = len(self._queue)
        if depth + count > self.max_queue:
            raise OverloadedError(
                f"inference queue full ({depth} of {self.max_queue} crops waiting, this request adds {count}); "
                "retry later",
                self.retry_after_s,
            )

    async def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Embed one request's crops ((3, H, W) uint8 each) -> (N, D) float32 rows in input order.

        Raises OverloadedError (503) when the queue cannot take all N crops now: never half-queued.
        """
        if not crops:
            raise ValueError("no crops to embed")
        loop = asyncio.get_running_loop()
        job = _Job(loop=loop, future=loop.create_future(), size=len(crops), remaining=len(crops))
        job.results = [None] * len(crops)
        now = time.monotonic()
        with self._cond:
            if self._stopping or self._thread is None:
                raise NotReadyError("the inference worker is not running")
            if len(self._queue) + len(crops) > self.max_queue:
                raise OverloadedError(
                    f"inference queue full ({len(self._queue)} of {self.max_queue} crops waiting, "
                    f"this request adds {len(crops)}); retry later",
                    self.retry_after_s,
                )
            self._queue.extend(_Item(job, i, pixels, now) for i, pixels in enumerate(crops))
            depth = len(self._queue)
            self._cond.notify()
        self._report_depth(depth)
        return await job.future

    def _report_depth(self, depth: int) -> None:
        if self._observer is not None:
            self._observer.set_queue_depth(depth)

    def _next_batch(self) -> list[_Item] | None:
        """Block until a batch is due; None once stopping and drained."""
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if not self._queue:
                return None
            deadline = self._queue[0].enqueued_at + self.max_delay_s
            while len(self._queue) < self.max_batch_size and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch: list[_Item] = []
            dropped = 0
            while self._queue and len(batch) < self.max_batch_size:
                item = self._queue.popleft()
                # The request is gone (client disconnected, or an earlier batch failed it): drop its crops here,
                # so they neither get embedded nor take the place of live crops in this batch.
                if item.job.abandoned():
                    dropped += 1
                else:
                    batch.append(item)
            depth = len(self._queue)
        if dropped:
            logger.debug("dropped %d queued crops of abandoned requests", dropped)
        self._report_depth(depth)
        return batch

    def _run(self) -> None:
        logger.info(
            "inference worker started (max batch %d, max delay %.1f ms, queue %d)",
            self.max_batch_size,
            self.max_delay_s * 1000,
            self.max_queue,
        )
        while True:
            batch = self._next_batch()
            if batch is None:
                break
            # Checked again: a request may have been abandoned while its batch was formed.
            live = [item for item in batch if not item.job.abandoned()]
            if live:
                self._process(live)
        logger.info("inference worker stopped after %d batches", self.batches_run)

    def _process(self, items: list[_Item]) -> None:
        start = time.perf_counter()
        try:
            embeddings = self._embed_fn(np.stack([item.pixels for item in items]))
            if embeddings.shape[0] != len(items):
                raise RuntimeError(f"embed_fn returned {embeddings.shape[0]} rows for {len(items)} crops")
        except Exception as exc:
            # One bad batch fails only the requests in it; the worker keeps serving the next ones.
            logger.exception("inference failed for a batch of %d crops", len(items))
            for job in {item.job for item in items}:
                self._fail(job, exc)
            return
        elapsed = time.perf_counter() - start
        self.batches_run += 1
        if self._observer is not None:
            self._observer.observe_batch(len(items), elapsed)
        finished: list[tuple[_Job, np.ndarray]] = []
        for item, row in zip(items, embeddings, strict=True):
            job = item.job
            if job.failed:
                continue
            job.results[item.slot] = row
            job.remaining -= 1
            if job.remaining == 0:
                finished.append((job, np.stack([r for r in job.results if r is not None])))
        self._deliver(finished)

    def _deliver(self, finished: list[tuple[_Job, np.ndarray]]) -> None:
        """Hand the requests completed by one batch their results: one callback per event loop, in queue order.

        One wake-up of the loop per batch instead of one per request (32 per batch of single-crop requests).
        """
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[np.ndarray], np.ndarray]]] = {}
        for job, value in finished:
            by_loop.setdefault(job.loop, []).append((job.future, value))
        for loop, results in by_loop.items():
            try:
                loop.call_soon_threadsafe(_set_results, results)
            except RuntimeError:
                logger.debug("event loop closed before results could be delivered")

    def _fail(self, job: _Job, exc: BaseException) -> None:
        if job.failed:
            return
        job.failed = True
        try:
            job.loop.call_soon_threadsafe(_set_exception, job.future, exc)
        except RuntimeError:
            logger.debug("event loop closed before an error could be delivered")

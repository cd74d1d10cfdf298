"""Gallery searches of every concurrent request on one thread, in arrival order, batched per collection.

Each POST /query used to search on its own worker thread: one thread hop, one index search and one SQLite
lookup per request, with the worker threads racing for the gallery's locks (so a later request could be answered
before an earlier one). Here requests queue their queries; one search thread takes everything queued (up to
``max_queries`` query rows), searches each (collection, k) group with one index call (one matrix product for an
exact index) and one row lookup, and hands each request its rows. Requests are served in the order they queued.

A query's hits do not depend on the other queries searched with it (every backend ranks each query row on its
own), so the answers are those of one search per request.

    searcher = BatchedSearch(gallery.search, max_queries=256)
    searcher.start()
    hits = await searcher.search("match-1", queries, k=10)     # queries (Q, D) -> Q lists of ScoredItem
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from service.core.errors import NotReadyError
from service.gallery.base import ScoredItem

logger = logging.getLogger(__name__)

SearchFn = Callable[[str, np.ndarray, int], list[list[ScoredItem]]]
Hits = list[list[ScoredItem]]


@dataclass(eq=False)
class _SearchJob:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Hits]
    collection: str
    queries: np.ndarray  # (Q, D) float32
    k: int


def _settle(outcomes: Sequence[tuple[asyncio.Future[Hits], Hits | BaseException]]) -> None:
    """Runs on the event loop: one callback per loop and group, however many requests it answers."""
    for future, outcome in outcomes:
        if future.done():  # the request was cancelled meanwhile (client gone)
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


class BatchedSearch:
    """A FIFO of search requests and the one thread that serves them with ``search_fn`` (Gallery.search)."""

    def __init__(self, search_fn: SearchFn, *, max_queries: int = 256) -> None:
        if max_queries < 1:
            raise ValueError("max_queries must be >= 1")
        self._search_fn = search_fn
        self.max_queries = max_queries
        self._queue: deque[_SearchJob] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.calls = 0  # search_fn calls made (tests and benchmarks: fewer than requests under load)

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("search thread already started")
        self._thread = threading.Thread(target=self._run, name="reid-search", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Serve what is queued, then join the thread (new searches are refused from now on)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("search thread did not stop within %.1f s", timeout)

    async def search(self, collection: str, queries: np.ndarray, k: int) -> Hits:
        """(Q, D) float32 queries -> Q lists of up to k ScoredItem, best first, as ``search_fn`` would answer.

        Errors of ``search_fn`` (unknown collection, backend down) are raised here, for each request of the group.
        """
        loop = asyncio.get_running_loop()
        job = _SearchJob(loop, loop.create_future(), collection, queries, k)
        with self._cond:
            if self._stopping or self._thread is None:
                raise NotReadyError("the search thread is not running")
            self._queue.append(job)
            self._cond.notify()
        return await job.future

    def _take(self) -> list[_SearchJob] | None:
        """Everything queued, oldest first, up to max_queries rows (at least one job); None once stopped and empty."""
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if not self._queue:
                return None
            taken = [self._queue.popleft()]
            rows = len(taken[0].queries)
            while self._queue and rows + len(self._queue[0].queries) <= self.max_queries:
                rows += len(self._queue[0].queries)
                taken.append(self._queue.popleft())
            return taken

    def _run(self) -> None:
        while (jobs := self._take()) is not None:
            groups: dict[tuple[str, int], list[_SearchJob]] = {}
            for job in jobs:
                if not job.future.cancelled():
                    groups.setdefault((job.collection, job.k), []).append(job)
            for (collection, k), members in groups.items():
                self._serve(collection, k, members)

    def _serve(self, collection: str, k: int, jobs: list[_SearchJob]) -> None:
        outcomes: list[Hits | BaseException]
        try:
            queries = jobs[0].queries if len(jobs) == 1 else np.concatenate([job.queries for job in jobs])
            hits = self._search_fn(collection, queries, k)
            self.calls += 1
            outcomes, start = [], 0
            for job in jobs:
                outcomes.append(hits[start : start + len(job.queries)])
                start += len(job.queries)
        except Exception as exc:  # an unknown collection, a backend down: every request of the group hears it
            outcomes = [exc] * len(jobs)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Hits], Hits | BaseException]]] = {}
        for job, outcome in zip(jobs, outcomes, strict=True):
            by_loop.setdefault(job.loop, []).append((job.future, outcome))
        for loop, settled in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, settled)
            except RuntimeError:
                logger.debug("event loop closed before search results could be delivered")

"""BatchedSearch with a real thread and a gated fake gallery search: arrival order, grouping, errors, cancellation.

Ordering comes from events, never from sleeps: the fake search signals when the thread has entered it and holds
it there until the test opens its gate, so the test can queue more requests behind it.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from service.core.errors import NotReadyError
from service.gallery import CollectionNotFoundError, GalleryItem, ScoredItem
from service.gallery.batched_search import BatchedSearch

WAIT_S = 30.0  # a failure bound for waits on events, never a speed target


class GatedSearch:
    """Gallery.search stand-in: hit i of query q is item f"{collection}-{q[0]:g}-{i}"; records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[float], int]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()

    def __call__(self, collection: str, queries: np.ndarray, k: int) -> list[list[ScoredItem]]:
        self.calls.append((collection, queries[:, 0].tolist(), k))
        self.entered.set()
        if not self.gate.wait(WAIT_S):
            raise RuntimeError("test gate never opened")
        if collection == "missing":
            raise CollectionNotFoundError(collection)
        return [
            [ScoredItem(GalleryItem(f"{collection}-{q[0]:g}-{i}", collection, "x"), 1.0 - i / 10) for i in range(k)]
            for q in queries
        ]


def rows(*firsts: float) -> np.ndarray:
    """(len(firsts), 4) queries whose first column tells them apart."""
    out = np.zeros((len(firsts), 4), dtype=np.float32)
    out[:, 0] = firsts
    return out


async def queued(searcher: BatchedSearch, count: int) -> None:
    """Yield to the loop until ``count`` searches are queued behind the one in progress."""
    for _ in range(10_000):
        if len(searcher._queue) >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{count} searches never got queued")


def test_requests_queued_together_share_one_search_per_collection_in_arrival_order() -> None:
    fake = GatedSearch()
    searcher = BatchedSearch(fake, max_queries=64)
    searcher.start()
    finished: list[str] = []

    async def one(name: str, collection: str, queries: np.ndarray, k: int) -> list[list[ScoredItem]]:
        hits = await searcher.search(collection, queries, k)
        finished.append(name)
        return hits

    async def scenario() -> list[list[list[ScoredItem]]]:
        first = asyncio.ensure_future(one("first", "a", rows(0), 2))
        await asyncio.to_thread(fake.entered.wait, WAIT_S)  # the thread now holds `first` in the search
        later = [
            asyncio.ensure_future(one("a1", "a", rows(1, 2), 2)),
            asyncio.ensure_future(one("b1", "b", rows(3), 2)),
            asyncio.ensure_future(one("a2", "a", rows(4), 2)),
            asyncio.ensure_future(one("a-k3", "a", rows(5), 3)),
        ]
        await queued(searcher, 4)
        fake.gate.set()
        return list(await asyncio.gather(first, *later))

    try:
        results = asyncio.run(scenario())
    finally:
        searcher.stop()
    # One call for the first request, then one per (collection, k) of everything queued behind it, in order.
    assert fake.calls == [("a", [0.0], 2), ("a", [1.0, 2.0, 4.0], 2), ("b", [3.0], 2), ("a", [5.0], 3)]
    assert searcher.calls == 4
    first, a1, b1, a2, a_k3 = results
    assert [[h.item.id for h in per] for per in first] == [["a-0-0", "a-0-1"]]
    assert [[h.item.id for h in per] for per in a1] == [["a-1-0", "a-1-1"], ["a-2-0", "a-2-1"]]
    assert [[h.item.id for h in per] for per in a2] == [["a-4-0", "a-4-1"]]
    assert [[h.item.id for h in per] for per in b1] == [["b-3-0", "b-3-1"]]
    assert [len(per) for per in a_k3] == [3]
    assert finished == ["first", "a1", "a2", "b1", "a-k3"]


def test_a_failed_search_fails_only_its_group() -> None:
    fake = GatedSearch()
    searcher = BatchedSearch(fake)
    searcher.start()

    async def scenario() -> list[object]:
        first = asyncio.ensure_future(searcher.search("a", rows(0), 1))
        await asyncio.to_thread(fake.entered.wait, WAIT_S)
        later = [
            asyncio.ensure_future(searcher.search("missing", rows(1), 1)),
            asyncio.ensure_future(searcher.search("missing", rows(2), 1)),
            asyncio.ensure_future(searcher.search("a", rows(3), 1)),
        ]
        await queued(searcher, 3)
        fake.gate.set()
        return list(await asyncio.gather(first, *later, return_exceptions=True))

    try:
        first, missing_1, missing_2, other = asyncio.run(scenario())
    finally:
        searcher.stop()
    assert not isinstance(first, BaseException)
    assert isinstance(missing_1, CollectionNotFoundError) and isinstance(missing_2, CollectionNotFoundError)
    assert [h.item.id for h in other[0]] == ["a-3-0"]  # type: ignore[index]


def test_a_cancelled_request_is_not_searched() -> None:
    fake = GatedSearch()
    searcher = BatchedSearch(fake)
    searcher.start()

    async def scenario() -> None:
        first = asyncio.ensure_future(searcher.search("a", rows(0), 1))
        await asyncio.to_thread(fake.entered.wait, WAIT_S)
        gone = asyncio.ensure_future(searcher.search("a", rows(1), 1))
        kept = asyncio.ensure_future(searcher.search("a", rows(2), 1))
        await queued(searcher, 2)
        gone.cancel()
        fake.gate.set()
        await asyncio.gather(first, kept)

    try:
        asyncio.run(scenario())
    finally:
        searcher.stop()
    assert fake.calls == [("a", [0.0], 1), ("a", [2.0], 1)]


def test_max_queries_bounds_one_search() -> None:
    fake = GatedSearch()
    searcher = BatchedSearch(fake, max_queries=3)
    searcher.start()

    async def scenario() -> None:
        first = asyncio.ensure_future(searcher.search("a", rows(0), 1))
        await asyncio.to_thread(fake.entered.wait, WAIT_S)
        later = [asyncio.ensure_future(searcher.search("a", rows(i, i), 1)) for i in (1, 2, 3)]
        await queued(searcher, 3)
        fake.gate.set()
        await asyncio.gather(first, *later)

    try:
        asyncio.run(scenario())
    finally:
        searcher.stop()
    # 2 + 2 rows would pass 3: the second and third requests are searched apart, still in order.
    assert [call[1] for call in fake.calls] == [[0.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]


def test_search_after_stop_is_refused() -> None:
    searcher = BatchedSearch(GatedSearch())
    searcher.start()
    searcher.stop()
    with pytest.raises(NotReadyError):
        asyncio.run(searcher.search("a", rows(0), 1))
    with pytest.raises(ValueError):
        BatchedSearch(GatedSearch(), max_queries=0)

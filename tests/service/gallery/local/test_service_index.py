"""FAISS registry against exact numpy search on seeded unit vectors; removal, HNSW switch, threads."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from service.gallery.local.index import FaissIndexRegistry, IndexConfig

DIM = 16


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact(gallery: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> list[list[int]]:
    scores = queries @ gallery.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[int(ids[j]) for j in row] for row in order]


def test_flat_search_equals_exact_search() -> None:
    rng = np.random.default_rng(0)
    gallery, queries = unit(rng, 300), unit(rng, 20)
    ids = np.arange(1000, 1300, dtype=np.int64)
    reg = FaissIndexRegistry(DIM)
    reg.add("c", ids, gallery)
    hits = reg.search("c", queries, k=7)
    assert [[i for i, _ in h] for h in hits] == exact(gallery, ids, queries, 7)
    expected_scores = np.sort(queries @ gallery.T, axis=1)[:, ::-1][:, :7]
    np.testing.assert_allclose([[s for _, s in h] for h in hits], expected_scores, atol=1e-5)
    assert reg.size("c") == 300 and reg.kind("c") == "flat"


def test_k_larger_than_collection_and_unknown_collection() -> None:
    rng = np.random.default_rng(1)
    reg = FaissIndexRegistry(DIM)
    reg.add("c", np.array([5, 6]), unit(rng, 2))
    hits = reg.search("c", unit(rng, 3), k=10)
    assert all(sorted(i for i, _ in h) == [5, 6] for h in hits)
    assert reg.search("nope", unit(rng, 2), k=3) == [[], []]


def test_collections_are_isolated_and_removal_works() -> None:
    rng = np.random.default_rng(2)
    a, b = unit(rng, 10), unit(rng, 10)
    reg = FaissIndexRegistry(DIM)
    reg.add("a", np.arange(10), a)
    reg.add("b", np.arange(10, 20), b)
    assert {i for i, _ in reg.search("a", a[:1], k=20)[0]} == set(range(10))
    assert reg.remove("a", np.array([0, 3, 99])) == 2
    top = reg.search("a", a[:1], k=20)[0]
    assert 0 not in {i for i, _ in top} and len(top) == 8
    reg.drop("b")
    assert reg.collections() == ["a"] and reg.size("b") == 0


def test_duplicate_id_and_bad_dimension_are_refused() -> None:
    rng = np.random.default_rng(3)
    reg = FaissIndexRegistry(DIM)
    reg.add("c", np.array([1]), unit(rng, 1))
    with pytest.raises(ValueError, match="already"):
        reg.add("c", np.array([1]), unit(rng, 1))
    with pytest.raises(ValueError, match="expected vectors"):
        reg.add("c", np.array([2]), np.ones((1, DIM + 1), np.float32))


def test_hnsw_switch_keeps_recall_and_supports_deletes() -> None:
    rng = np.random.default_rng(4)
    gallery, queries = unit(rng, 400), unit(rng, 30)
    ids = np.arange(400, dtype=np.int64)
    reg = FaissIndexRegistry(DIM, IndexConfig(hnsw_min_size=200, hnsw_m=16, hnsw_ef_search=64))
    reg.add("c", ids[:150], gallery[:150])
    assert reg.kind("c") == "flat"
    reg.add("c", ids[150:], gallery[150:])
    reg.wait_for_builds()  # the switch is built in the background
    assert reg.kind("c") == "hnsw" and reg.size("c") == 400
    truth = exact(gallery, ids, queries, 5)
    got = [[i for i, _ in h] for h in reg.search("c", queries, k=5)]
    recall = np.mean([len(set(t) & set(g)) / 5 for t, g in zip(truth, got, strict=True)])
    assert recall >= 0.95
    # Deleting the current top-1 of every query hides it; the next best takes its place.
    top1 = np.array(sorted({t[0] for t in truth}), dtype=np.int64)
    reg.remove("c", top1)
    after = [[i for i, _ in h] for h in reg.search("c", queries, k=5)]
    assert all(len(h) == 5 and not set(h) & set(top1.tolist()) for h in after)
    keep = np.setdiff1d(ids, top1)
    truth_after = exact(gallery[keep], keep, queries, 1)
    assert np.mean([a[0] == t[0] for a, t in zip(after, truth_after, strict=True)]) >= 0.9


def test_concurrent_adds_and_searches() -> None:
    rng = np.random.default_rng(5)
    vectors = unit(rng, 800)
    reg = FaissIndexRegistry(DIM)
    errors: list[BaseException] = []

    def writer(part: int) -> None:
        try:
            for start in range(part * 200, part * 200 + 200, 10):
                reg.add("c", np.arange(start, start + 10), vectors[start : start + 10])
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        try:
            for _ in range(100):
                for hits in reg.search("c", vectors[:4], k=5):
                    assert all(-1.01 <= s <= 1.01 for _, s in hits)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(p,)) for p in range(4)]
    threads += [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert reg.size("c") == 800
    assert [i for i, _ in reg.search("c", vectors[:3], k=1)[0]] == [0]


# ------------------------------------------------------------------------------ writes racing with searches
K = 5
READERS = 2


@dataclass
class Write:
    """One write on the registry (``run``) and the same change on the test's model of it (``apply``)."""

    name: str
    run: Callable[[], object]
    apply: Callable[[dict[str, dict[int, np.ndarray]]], None]


def answers(model: dict[str, dict[int, np.ndarray]], collection: str, queries: np.ndarray) -> list[list[int]]:
    """Exact top-K ids per query over the vectors the model says are visible ([] per query when absent)."""
    held = model.get(collection) or {}
    if not held:
        return [[] for _ in range(len(queries))]
    return exact(np.stack(list(held.values())), np.fromiter(held, dtype=np.int64), queries, K)


@dataclass
class Race:
    """What one write's race saw: every (collection, top-K ids) answer, the background builds the write started,
    and how many searches provably overlapped one of those builds (began and ended inside its window)."""

    seen: list[tuple[str, list[list[int]]]]
    builds: int
    overlapping: int


def race(
    reg: FaissIndexRegistry, write: Callable[[], object], collections: list[str], queries: np.ndarray
) -> Race:
    """Run ``write``, and the background index build it may start, while READERS threads search ``collections``
    (all released together by a barrier) until both are done; each reader searches once more afterwards.

    Overlap is made, not hoped for: each build stops at its "built" point (new index made, not yet swapped in) and
    waits there until every reader has completed a search of that collection that began after the build got there;
    such searches are counted as overlapping. Their answers are checked like all others."""
    start = threading.Barrier(READERS + 1)
    done = threading.Event()
    seen: list[tuple[str, list[list[int]]]] = []
    errors: list[BaseException] = []
    cond = threading.Condition()
    window: dict[str, Any] = {"collection": None, "id": 0, "readers": set()}
    counts = {"builds": 0, "overlapping": 0}

    def hook(collection: str, point: str) -> None:
        with cond:
            if point == "start":
                counts["builds"] += 1
                return
            if point != "built":
                return
            window.update(collection=collection, id=window["id"] + 1, readers=set())
            arrived = cond.wait_for(lambda: len(window["readers"]) == READERS, timeout=60)
            window["collection"] = None
        if not arrived:
            errors.append(AssertionError(f"no search of {collection} overlapped its build"))

    def reader(number: int) -> None:
        try:
            start.wait()
            while True:
                finished = done.is_set()
                for c in collections:
                    with cond:
                        opened = window["id"] if window["collection"] == c else None
                    got = [[i for i, _ in hits] for hits in reg.search(c, queries, K)]
                    seen.append((c, got))
                    if opened is not None:
                        with cond:
                            if window["id"] == opened and window["collection"] == c:
                                window["readers"].add(number)
                                counts["overlapping"] += 1
                                cond.notify_all()
                if finished:
                    return
        except BaseException as exc:
            errors.append(exc)

    reg.build_hook = hook
    threads = [threading.Thread(target=reader, args=(n,)) for n in range(READERS)]
    for t in threads:
        t.start()
    start.wait()
    try:
        write()
        # Builds run off the request path: the readers keep racing until the swap is done as well.
        reg.wait_for_builds(timeout_s=120)
    finally:
        done.set()
        for t in threads:
            t.join(60)
        reg.build_hook = None
    assert not errors, errors
    return Race(seen, counts["builds"], counts["overlapping"])


def test_add_remove_rebuild_and_drop_racing_with_searches() -> None:
    """Each write runs while READERS threads search. Writes are atomic under the collection's lock, so a racing
    search must return exactly the answer before the write or exactly the answer after it (exact top-K over the
    vectors visible at that moment: no removed id, no half-built index); once the write has returned, a search
    must return the answer after it.

    The tiny HNSW settings make the sequence cross both ways between exact and HNSW indexes (add past
    hnsw_min_size, tombstone rebuilds, back to flat below half), and hnsw_ef_search above the collection size
    makes HNSW search exhaustive, so its answers are exact as well. Collection e makes two rebuilds of ~2000
    vectors, long enough for searches to overlap them.
    """
    rng = np.random.default_rng(6)
    pool = unit(rng, 3000)
    queries = unit(rng, 6)
    reg = FaissIndexRegistry(DIM, IndexConfig(hnsw_min_size=24, hnsw_m=8, hnsw_ef_search=4096))

    def add(collection: str, ids: range) -> Write:
        def apply(model: dict[str, dict[int, np.ndarray]]) -> None:
            model.setdefault(collection, {}).update({i: pool[i] for i in ids})

        rows = list(ids)
        return Write(
            f"add {collection} {ids.start}..{ids.stop - 1}",
            lambda: reg.add(collection, np.array(rows, dtype=np.int64), pool[rows]),
            apply,
        )

    def remove(collection: str, ids: list[int]) -> Write:
        def apply(model: dict[str, dict[int, np.ndarray]]) -> None:
            for i in ids:
                model[collection].pop(i, None)

        return Write(
            f"remove {len(ids)} from {collection}", lambda: reg.remove(collection, np.array(ids, dtype=np.int64)), apply
        )

    def drop(collection: str) -> Write:
        return Write(f"drop {collection}", lambda: reg.drop(collection), lambda model: model.pop(collection, None))

    order = rng.permutation(200).tolist()
    writes = [
        add("c", range(0, 16)),
        add("d", range(200, 240)),  # d: a collection dropped while it is searched
        add("c", range(16, 30)),  # crosses hnsw_min_size: rebuilt as HNSW
        add("c", range(30, 120)),
        add("c", range(120, 200)),
        remove("c", order[:20]),  # HNSW tombstones, hidden at search time
        remove("c", order[20:90]),  # > 64 tombstones: rebuilt (still HNSW)
        drop("d"),
        remove("c", order[90:190]),  # rebuilt below hnsw_min_size / 2: back to exact flat
        add("c", range(200, 210)),  # 20 vectors: stays flat
        remove("c", order[190:195]),  # flat remove_ids
        drop("c"),
        add("c", range(0, 10)),  # a new collection under the old name
        add("e", range(1000, 3000)),  # one add builds a 2000-vector HNSW graph: a long rebuild to race with
        remove("e", list(range(1000, 1070))),  # 70 tombstones: rebuilt from 1930 vectors
    ]
    collections = ["c", "d", "e"]
    model: dict[str, dict[int, np.ndarray]] = {}
    kinds: list[str | None] = []
    problems: list[str] = []
    racing = builds = overlapping = 0
    for write in writes:
        before = {c: answers(model, c, queries) for c in collections}
        write.apply(model)
        after = {c: answers(model, c, queries) for c in collections}
        raced = race(reg, write.run, collections, queries)
        builds += raced.builds
        overlapping += raced.overlapping
        # Every build of this write was overlapped by a search of each reader (race() holds it until so).
        assert raced.overlapping >= READERS * raced.builds, (write.name, raced.builds, raced.overlapping)
        for c, got in raced.seen:
            racing += 1
            if got not in (before[c], after[c]):
                problems.append(f"{write.name}: a racing search of {c} saw {got}, not {before[c]} or {after[c]}")
        for c in collections:
            settled = [[i for i, _ in hits] for hits in reg.search(c, queries, K)]
            if settled != after[c]:
                problems.append(f"{write.name}: after it, {c} answered {settled}, expected {after[c]}")
            assert reg.size(c) == len(model.get(c) or {}), write.name
        kinds.append(reg.kind("c"))
    assert not problems, "\n".join(problems[:10])
    assert kinds == [
        "flat",
        "flat",
        "hnsw",
        "hnsw",
        "hnsw",
        "hnsw",
        "hnsw",
        "hnsw",
        "flat",
        "flat",
        "flat",
        None,
        "flat",
        "flat",
        "flat",
    ], kinds
    assert reg.kind("e") == "hnsw"
    # Builds that searches raced with (the HNSW switches, tombstone rebuilds, the way back to flat): races happened.
    assert builds >= 5 and overlapping >= READERS * builds, (builds, overlapping)
    print(f"{racing} searches checked while {len(writes)} writes ran; {overlapping} of them overlapped {builds} builds")

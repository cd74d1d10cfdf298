"""FAISS registry against exact numpy search on seeded unit vectors; removal, HNSW switch, threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from service.index import FaissIndexRegistry, IndexConfig

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

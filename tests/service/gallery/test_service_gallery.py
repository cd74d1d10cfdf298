"""The gallery layer's contract, on every backend (parametrised through the ``gallery`` fixture): local, Milvus Lite
embedded in this process, and a real Milvus standalone server (one per session, tests/conftest.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.gallery import (
    CollectionNotFoundError,
    DuplicateCropError,
    Gallery,
    NewItem,
)
from service.gallery.local.backend import LocalGallery
from service.gallery.local.index import IndexConfig
from service.gallery.milvus.backend import MilvusConfig, MilvusGallery
from tests.support.milvus_server import PrefixPool

DIM = 16
OpenGallery = Callable[[], Gallery]


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, DIM) float32 unit rows."""
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def items(vectors: np.ndarray, prefix: str = "p", start: int = 0) -> list[NewItem]:
    return [
        NewItem(f"{prefix}{start + i}", {"frame": start + i}, f"{prefix}-{start + i:060d}", v)
        for i, v in enumerate(vectors)
    ]


def open_local(path: Path) -> OpenGallery:
    return lambda: LocalGallery.open(path / "gallery.sqlite3", DIM, "fp", IndexConfig(hnsw_min_size=1000))


def open_milvus(path: Path) -> OpenGallery:
    """Milvus Lite embedded in this process, on a file in tmp_path (closing stops it, reopening reads the file)."""
    return lambda: MilvusGallery.open(MilvusConfig(uri=str(path / "milvus.db")), DIM, "fp")


def open_milvus_server(uri: str, prefix: str) -> OpenGallery:
    """The shared Milvus standalone server, on collections of this test's own prefix."""
    return lambda: MilvusGallery.open(MilvusConfig(uri=uri, prefix=prefix), DIM, "fp")


@pytest.fixture(params=["local", "milvus", "milvus-server"])
def reopen(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenGallery]:
    """A function opening the backend's gallery on the same durable state each time it is called."""
    if request.param != "milvus-server":
        openers: dict[str, Callable[[Path], OpenGallery]] = {"local": open_local, "milvus": open_milvus}
        yield openers[request.param](tmp_path)
        return
    pool: PrefixPool = request.getfixturevalue("milvus_prefixes")
    prefix = pool.take(DIM)
    yield open_milvus_server(pool.uri, prefix)
    pool.give_back(prefix)


@pytest.fixture()
def gallery(reopen: OpenGallery) -> Iterator[Gallery]:
    g = reopen()
    yield g
    g.close()


def test_add_then_search_returns_items_best_first(gallery: Gallery) -> None:
    rng = np.random.default_rng(0)
    vectors = unit(rng, 20)
    added = gallery.add("m1", items(vectors))
    assert [a.label for a in added] == [f"p{i}" for i in range(20)]
    assert len({a.id for a in added}) == 20 and gallery.size("m1") == 20
    hits = gallery.search("m1", vectors[[3, 7]], k=5)
    assert [h[0].item.label for h in hits] == ["p3", "p7"]
    assert hits[0][0].score == pytest.approx(1.0, abs=1e-5)
    exact = vectors @ vectors[3]
    assert [h.score for h in hits[0]] == pytest.approx(sorted(exact, reverse=True)[:5], abs=1e-5)
    assert hits[0][0].item.metadata == {"frame": 3} and hits[0][0].item.created_at


def test_collections_are_separate(gallery: Gallery) -> None:
    rng = np.random.default_rng(1)
    a, b = unit(rng, 4), unit(rng, 3)
    gallery.add("a", items(a, "a"))
    gallery.add("b", items(b, "b"))
    assert all(h.item.collection == "a" for h in gallery.search("a", b, k=10)[0])
    assert [(c.name, c.size) for c in gallery.collections()] == [("a", 4), ("b", 3)]
    with pytest.raises(CollectionNotFoundError):
        gallery.search("nope", a, k=1)
    assert not gallery.has_collection("nope") and gallery.has_collection("a")


def test_get_list_delete_and_drop(gallery: Gallery) -> None:
    rng = np.random.default_rng(2)
    vectors = unit(rng, 6)
    added = gallery.add("m", items(vectors))
    assert gallery.get(added[2].id) == added[2]
    total, page = gallery.list_items("m", offset=2, limit=3)
    assert total == 6 and [p.label for p in page] == ["p2", "p3", "p4"]
    with pytest.raises(CollectionNotFoundError):
        gallery.list_items("nope", 0, 10)

    gone = gallery.delete(added[2].id)
    assert gone is not None and gone.label == "p2"
    assert gallery.delete(added[2].id) is None and gallery.get(added[2].id) is None
    assert all(h.item.id != added[2].id for h in gallery.search("m", vectors[[2]], k=6)[0])
    assert gallery.size("m") == 5

    assert gallery.drop_collection("m") == 5
    assert gallery.drop_collection("m") is None
    assert not gallery.has_collection("m") and gallery.collections() == []


def test_same_bytes_twice_is_refused_and_nothing_is_added(gallery: Gallery) -> None:
    rng = np.random.default_rng(3)
    first = gallery.add("m", items(unit(rng, 3)))
    again = items(unit(rng, 3), start=2)  # p2 repeats a registered crop's hash, p3 and p4 are new
    with pytest.raises(DuplicateCropError) as err:
        gallery.add("m", again)
    assert err.value.status_code == 409 and err.value.duplicates == [(0, first[2].id)]
    assert err.value.extra == {"duplicates": [{"file": 0, "id": first[2].id}]}
    assert gallery.size("m") == 3
    twice = items(unit(rng, 1), prefix="q") * 2
    with pytest.raises(DuplicateCropError) as err:
        gallery.add("m", twice)
    assert err.value.duplicates == [(1, None)]
    # The same bytes in another collection are another registration.
    assert len(gallery.add("other", items(unit(rng, 1), start=2))) == 1


def test_everything_acknowledged_survives_reopening(reopen: OpenGallery) -> None:
    rng = np.random.default_rng(4)
    vectors = unit(rng, 30)
    first = reopen()
    added = first.add("m", items(vectors))
    first.delete(added[0].id)
    first.close()
    second = reopen()
    try:
        assert second.size("m") == 29
        hits = second.search("m", vectors[[5]], k=1)[0]
        assert hits[0].item == added[5]
        assert second.get(added[0].id) is None
    finally:
        second.close()


def test_concurrent_adds_and_deletes_keep_store_and_index_in_agreement(gallery: Gallery) -> None:
    rng = np.random.default_rng(5)
    vectors = unit(rng, 64)
    start = threading.Barrier(4)
    added: list[Any] = []
    lock = threading.Lock()

    def writer(w: int) -> None:
        start.wait()
        for j in range(8):
            got = gallery.add("m", items(vectors[w * 16 + 2 * j : w * 16 + 2 * j + 2], start=w * 16 + 2 * j))
            with lock:
                added.extend(got)
            gallery.delete(got[0].id)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    kept = {a.id for a in added[1::2]}  # each writer appended (deleted, kept) pairs under the lock
    assert all(gallery.get(a.id) is None for a in added[0::2])
    assert gallery.size("m") == 32 == len(kept)
    found = {h.item.id for h in gallery.search("m", vectors, k=64)[0]}
    assert found == kept


def test_a_failed_index_update_undoes_the_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gallery = open_local(tmp_path)()
    rng = np.random.default_rng(6)
    assert isinstance(gallery, LocalGallery)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("index add failed")

    monkeypatch.setattr(gallery.index, "add", broken)
    with pytest.raises(RuntimeError):
        gallery.add("m", items(unit(rng, 2)))
    monkeypatch.undo()
    assert gallery.list_items("m", 0, 10)[0] == 0
    gallery.close()

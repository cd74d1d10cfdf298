"""GalleryStore on real SQLite files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from service.gallery.local.store import GalleryStore, NewItem, StoreError

DIM = 8


def item(label: str, seed: int, dim: int = DIM) -> NewItem:
    vec = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return NewItem(label=label, metadata={"seed": seed}, sha256=f"{seed:064x}", embedding=vec / np.linalg.norm(vec))


def test_pragmas_give_durable_commits(tmp_path: Path) -> None:
    store = GalleryStore(tmp_path / "g.sqlite3", DIM)
    with store._lock:  # reading the live connection's settings
        assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    store.close()


def test_insert_get_list_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "g.sqlite3"
    store = GalleryStore(path, DIM)
    rows = store.insert_items("m1", [item("a", 1), item("b", 2)])
    store.insert_items("m2", [item("c", 3)])
    assert [r.label for r in rows] == ["a", "b"]
    assert store.get(rows[1].id) == rows[1]
    np.testing.assert_allclose(store.get_embedding(rows[0].id), item("a", 1).embedding)
    total, page = store.list_items("m1", 1, 10)
    assert total == 2 and [r.label for r in page] == ["b"]
    assert store.list_items(None, 0, 10)[0] == 3
    store.close()
    # A fresh connection (another process would see the same) finds everything committed.
    reopened = GalleryStore(path, DIM)
    assert [(c.name, c.size) for c in reopened.collections()] == [("m1", 2), ("m2", 1)]
    ids, vectors = next(reopened.iter_embeddings("m1"))
    assert ids.tolist() == [rows[0].faiss_id, rows[1].faiss_id]
    np.testing.assert_allclose(vectors[1], item("b", 2).embedding)
    assert reopened.get_by_faiss_ids([rows[0].faiss_id, 12345]).keys() == {rows[0].faiss_id}
    reopened.close()


def test_insert_is_all_or_nothing(tmp_path: Path) -> None:
    store = GalleryStore(tmp_path / "g.sqlite3", DIM)
    store.insert_items("m1", [item("a", 1)])
    with pytest.raises(ValueError):
        store.insert_items("m1", [item("b", 2), item("bad", 3, dim=DIM + 1)])
    assert store.list_items("m1", 0, 10)[0] == 1
    # A failure inside the SQL transaction (not only in validation) also leaves nothing behind.
    with pytest.raises(sqlite3.IntegrityError):
        store.insert_items("new", [item("x", 4), NewItem(None, {}, "0", item("y", 5).embedding)])  # type: ignore[arg-type]
    assert store.list_items(None, 0, 10)[0] == 1
    assert not store.collection_exists("new")
    store.close()


def test_deletes_and_ids_are_never_reused(tmp_path: Path) -> None:
    store = GalleryStore(tmp_path / "g.sqlite3", DIM)
    first = store.insert_items("m1", [item("a", 1), item("b", 2)])
    assert store.delete_item(first[1].id) == first[1]
    assert store.delete_item(first[1].id) is None
    again = store.insert_items("m1", [item("c", 3)])
    assert again[0].faiss_id > first[1].faiss_id
    assert sorted(store.delete_collection("m1") or []) == [first[0].faiss_id, again[0].faiss_id]
    assert store.delete_collection("m1") is None
    assert store.collections() == [] and store.list_items(None, 0, 10)[0] == 0
    store.close()


def test_dimension_mismatch_refuses_to_open(tmp_path: Path) -> None:
    path = tmp_path / "g.sqlite3"
    store = GalleryStore(path, DIM, model_fingerprint="abc")
    store.insert_items("m1", [item("a", 1)])
    store.close()
    with pytest.raises(StoreError, match="dimension"):
        GalleryStore(path, DIM * 2)


def test_cursor_places_a_deleted_cursor_item_and_ids_keep_growing_across_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "g.sqlite3"
    store = GalleryStore(path, DIM)
    rows = store.insert_items("m", [item(f"p{i}", i) for i in range(6)])
    newest = store.insert_items("other", [item("o", 100)])[0].id
    store.close()
    # The newest stored id lies an hour ahead of this clock (a clock set back across a restart).
    ahead = f"{int(newest.replace('-', '')[:12], 16) + 3_600_000:012x}"
    future = f"{ahead[:8]}-{ahead[8:]}{newest[13:]}"
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE items SET id = ? WHERE id = ?", (future, newest))
    store = GalleryStore(path, DIM)
    rows += store.insert_items("m", [item(f"p{i}", i) for i in range(6, 12)])
    ids = [r.id for r in rows]
    assert ids == sorted(ids) and ids[6] > future, "ids made after the reopen went below a stored one"
    _, page = store.list_items("m", 0, 3, after=None)
    assert [r.id for r in page] == ids[:3]
    store.delete_item(ids[2])  # the cursor item itself
    _, page = store.list_items("m", 0, 3, after=ids[2])
    assert [r.id for r in page] == ids[3:6]
    store.delete_item(ids[5])  # the last one before the reopen (and before another collection's item)
    _, page = store.list_items("m", 0, 3, after=ids[5])
    assert [r.id for r in page] == ids[6:9]
    total, page = store.list_items("m", 0, 4, after=ids[11])
    assert page == [] and total == 10
    store.close()

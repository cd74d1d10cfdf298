"""SQLite gallery store: the source of truth for every registered crop and its embedding.

WAL journal with synchronous=FULL, so a committed transaction survives a crash or power loss; every public
write is one transaction, committed before the caller answers 2xx. One connection is shared by the worker
threads behind a lock (sqlite3 connections are not safe for concurrent use).

    store = GalleryStore(Path("data/gallery.sqlite3"), embedding_dim=512)
    rows = store.insert_items("match-1", [NewItem("player-7", {}, sha, emb)])   # all or nothing
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from service.gallery.base import CollectionInfo, NewItem

__all__ = ["CollectionInfo", "GalleryRow", "GalleryStore", "NewItem", "StoreError"]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS collections (
    name TEXT PRIMARY KEY,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    faiss_id INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    collection TEXT NOT NULL REFERENCES collections(name) ON DELETE CASCADE,
    label TEXT NOT NULL,
    metadata TEXT NOT NULL,
    created_at TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    embedding BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS items_by_collection ON items(collection, faiss_id);
CREATE INDEX IF NOT EXISTS items_by_hash ON items(collection, sha256);
"""
# AUTOINCREMENT: a deleted row's faiss id is never handed out again, so a stale index entry cannot
# alias a new row.

_ROW_COLUMNS = "faiss_id, id, collection, label, metadata, created_at, sha256"


class StoreError(RuntimeError):
    """The database cannot be used with this model (e.g. a different embedding dimension)."""


@dataclass(frozen=True)
class GalleryRow:
    """A stored gallery item (without its embedding)."""

    id: str
    faiss_id: int
    collection: str
    label: str
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    sha256: str = ""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _row(values: Sequence[Any]) -> GalleryRow:
    faiss_id, item_id, collection, label, metadata, created_at, sha256 = values
    return GalleryRow(
        id=item_id,
        faiss_id=int(faiss_id),
        collection=collection,
        label=label,
        metadata=json.loads(metadata),
        created_at=created_at,
        sha256=sha256,
    )


class GalleryStore:
    """Gallery rows in one SQLite file; thread-safe (one connection, one lock)."""

    def __init__(self, path: Path, embedding_dim: int, model_fingerprint: str = "") -> None:
        self.path = Path(path)
        self.embedding_dim = int(embedding_dim)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: transactions are opened explicitly with BEGIN IMMEDIATE below.
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.executescript(_SCHEMA)
        self._check_meta(model_fingerprint)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _check_meta(self, model_fingerprint: str) -> None:
        with self._lock:
            meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
            count = self._conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
            stored_dim = int(meta.get("embedding_dim", self.embedding_dim))
            if count and stored_dim != self.embedding_dim:
                raise StoreError(
                    f"{self.path} holds {count} embeddings of dimension {stored_dim}, but the model produces "
                    f"{self.embedding_dim}: use another REID_DATA_DIR or the checkpoint that built it"
                )
            stored_fp = meta.get("model_fingerprint")
            if count and model_fingerprint and stored_fp and stored_fp != model_fingerprint:
                logger.warning(
                    "gallery %s was built with another checkpoint (%s..., now %s...): scores mix models",
                    self.path,
                    stored_fp[:12],
                    model_fingerprint[:12],
                )
            updates = {"schema_version": str(SCHEMA_VERSION), "embedding_dim": str(self.embedding_dim)}
            if model_fingerprint:
                updates["model_fingerprint"] = model_fingerprint
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", updates.items())
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def _embedding_blob(self, embedding: np.ndarray) -> bytes:
        vec = np.ascontiguousarray(embedding, dtype="<f4").reshape(-1)
        if vec.shape[0] != self.embedding_dim:
            raise ValueError(f"embedding has {vec.shape[0]} values, expected {self.embedding_dim}")
        return vec.tobytes()

    def insert_items(self, collection: str, items: Sequence[NewItem]) -> list[GalleryRow]:
        """Insert all items in one committed transaction (creating the collection on first use)."""
        blobs = [self._embedding_blob(item.embedding) for item in items]
        metadata = [json.dumps(item.metadata, separators=(",", ":"), sort_keys=True) for item in items]
        created = _now()
        rows: list[GalleryRow] = []
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    "INSERT OR IGNORE INTO collections(name, created_at) VALUES (?, ?)", (collection, created)
                )
                for item, blob, meta in zip(items, blobs, metadata, strict=True):
                    item_id = str(uuid.uuid4())
                    cursor = self._conn.execute(
                        "INSERT INTO items(id, collection, label, metadata, created_at, sha256, embedding) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (item_id, collection, item.label, meta, created, item.sha256, blob),
                    )
                    assert cursor.lastrowid is not None
                    rows.append(
                        GalleryRow(
                            item_id,
                            int(cursor.lastrowid),
                            collection,
                            item.label,
                            item.metadata,
                            created,
                            item.sha256,
                        )
                    )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return rows

    def get(self, item_id: str) -> GalleryRow | None:
        with self._lock:
            found = self._conn.execute(f"SELECT {_ROW_COLUMNS} FROM items WHERE id = ?", (item_id,)).fetchone()
        return None if found is None else _row(found)

    def get_embedding(self, item_id: str) -> np.ndarray | None:
        with self._lock:
            found = self._conn.execute("SELECT embedding FROM items WHERE id = ?", (item_id,)).fetchone()
        return None if found is None else np.frombuffer(found[0], dtype="<f4").astype(np.float32)

    def find_by_sha256(self, collection: str, hashes: Sequence[str]) -> dict[str, str]:
        """sha256 -> id of an item of ``collection`` already holding those crop bytes (absent: not registered)."""
        unique = sorted(set(hashes))
        found: dict[str, str] = {}
        with self._lock:
            for start in range(0, len(unique), 500):
                chunk = unique[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for sha, item_id in self._conn.execute(
                    f"SELECT sha256, id FROM items WHERE collection = ? AND sha256 IN ({marks})", [collection, *chunk]
                ):
                    found.setdefault(sha, item_id)
        return found

    def get_by_faiss_ids(self, faiss_ids: Sequence[int]) -> dict[int, GalleryRow]:
        """faiss id -> row for the ids still present (rows deleted meanwhile are simply absent)."""
        unique = sorted(set(int(i) for i in faiss_ids))
        found: dict[int, GalleryRow] = {}
        with self._lock:
            # Chunks stay below SQLite's bound-parameter limit.
            for start in range(0, len(unique), 500):
                chunk = unique[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for values in self._conn.execute(
                    f"SELECT {_ROW_COLUMNS} FROM items WHERE faiss_id IN ({marks})", chunk
                ):
                    row = _row(values)
                    found[row.faiss_id] = row
        return found

    def list_items(self, collection: str | None, offset: int, limit: int) -> tuple[int, list[GalleryRow]]:
        """(total, one page of rows in insertion order), optionally within one collection."""
        where, params = ("WHERE collection = ?", [collection]) if collection is not None else ("", [])
        with self._lock:
            total = self._conn.execute(f"SELECT COUNT(*) FROM items {where}", params).fetchone()[0]
            page = self._conn.execute(
                f"SELECT {_ROW_COLUMNS} FROM items {where} ORDER BY faiss_id LIMIT ? OFFSET ?",
                [*params, limit, offset],
            ).fetchall()
        return int(total), [_row(v) for v in page]

    def delete_item(self, item_id: str) -> GalleryRow | None:
        """Delete one row (committed); returns it, or None when the id is unknown."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                found = self._conn.execute(f"SELECT {_ROW_COLUMNS} FROM items WHERE id = ?", (item_id,)).fetchone()
                if found is not None:
                    self._conn.execute("DELETE FROM items WHERE id = ?", (item_id,))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return None if found is None else _row(found)

    def delete_collection(self, name: str) -> list[int] | None:
        """Delete a collection and its rows (committed); returns their faiss ids, or None when unknown."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                exists = self._conn.execute("SELECT 1 FROM collections WHERE name = ?", (name,)).fetchone()
                ids: list[int] = []
                if exists is not None:
                    ids = [r[0] for r in self._conn.execute("SELECT faiss_id FROM items WHERE collection = ?", (name,))]
                    self._conn.execute("DELETE FROM items WHERE collection = ?", (name,))
                    self._conn.execute("DELETE FROM collections WHERE name = ?", (name,))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return None if exists is None else ids

    def collection_exists(self, name: str) -> bool:
        with self._lock:
            return self._conn.execute("SELECT 1 FROM collections WHERE name = ?", (name,)).fetchone() is not None

    def collections(self) -> list[CollectionInfo]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT c.name, COUNT(i.faiss_id), c.created_at FROM collections c "
                "LEFT JOIN items i ON i.collection = c.name GROUP BY c.name ORDER BY c.name"
            ).fetchall()
        return [CollectionInfo(name, int(size), created) for name, size, created in rows]

    def iter_embeddings(self, collection: str, chunk: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (faiss ids (n,), embeddings (n, D) float32) chunks of one collection, for index rebuilds."""
        last = -1
        while True:
            with self._lock:
                rows = self._conn.execute(
                    "SELECT faiss_id, embedding FROM items WHERE collection = ? AND faiss_id > ? "
                    "ORDER BY faiss_id LIMIT ?",
                    (collection, last, chunk),
                ).fetchall()
            if not rows:
                return
            ids = np.array([r[0] for r in rows], dtype=np.int64)
            vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), -1)
            yield ids, vectors.astype(np.float32)
            last = int(ids[-1])

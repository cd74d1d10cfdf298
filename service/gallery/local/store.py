"""SQLite gallery store: the source of truth for every registered crop and its embedding.

WAL journal with synchronous=FULL, so a committed transaction survives a crash or power loss; every public
write is one transaction, committed before the caller answers 2xx. One connection is shared by the worker
threads behind a lock (sqlite3 connections are not safe for concurrent use).

    store = GalleryStore(Path("data/gallery.sqlite3"), embedding_dim=512)
    rows = store.insert_items("match-1", [NewItem("player-7", {}, sha, emb)])   # all or nothing
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from service.core.errors import InsufficientStorageError
from service.gallery.base import CollectionInfo, NewItem, UnknownCursorError
from service.gallery.ids import OrderedIds, is_ordered_id
from service.gallery.local.index import SourceView

__all__ = [
    "CollectionInfo",
    "FingerprintMismatchError",
    "GalleryRow",
    "GalleryStore",
    "NewItem",
    "StoreError",
    "gallery_owner",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2

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
CREATE TABLE IF NOT EXISTS deletions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    collection TEXT NOT NULL,
    faiss_id INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS deletions_by_collection ON deletions(collection, seq);
CREATE TABLE IF NOT EXISTS crops (
    faiss_id INTEGER PRIMARY KEY REFERENCES items(faiss_id) ON DELETE CASCADE,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS reindex (
    faiss_id INTEGER PRIMARY KEY,
    embedding BLOB NOT NULL
);
"""
# deletions: every deleted row's faiss id in commit order, so an index snapshot taken at sequence S replays
# exactly the deletes after S. crops: the uploaded file of each item, as sent. reindex: embeddings computed
# by reid-reindex for the next model, switched in with one transaction at its end.
# AUTOINCREMENT: a deleted row's faiss id is never handed out again, so a stale index entry cannot
# alias a new row.

_ROW_COLUMNS = "faiss_id, id, collection, label, metadata, created_at, sha256"


class StoreError(RuntimeError):
    """The database cannot be used with this model (e.g. a different embedding dimension)."""


class FingerprintMismatchError(StoreError):
    """The gallery's embeddings come from another checkpoint: serving would compare two models' vectors."""

    def __init__(self, path: Path, count: int, stored: str, current: str) -> None:
        super().__init__(
            f"gallery {path} holds {count} embeddings made by model {stored}, but the checkpoint now configured "
            f"is model {current}; embeddings of two models cannot be compared. Either start with a new, empty "
            f"REID_DATA_DIR for this model, or re-embed the gallery with it first: "
            f"reid-reindex --checkpoint <the new checkpoint> --data-dir {path.parent}"
        )
        self.stored = stored
        self.current = current


def gallery_owner(database: Path) -> tuple[str, int] | None:
    """(model fingerprint, item count) of an existing gallery file, read-only and without creating anything;
    None when there is no such file or it records no model yet. Lets reid-serve refuse a data folder of another
    model before the model loads."""
    database = Path(database)
    if not database.is_file():
        return None
    try:
        conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error:
        return None
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        count = int(conn.execute("SELECT COUNT(*) FROM items").fetchone()[0])
    except sqlite3.Error:  # an older or foreign file: the full check at start-up reports it
        return None
    finally:
        conn.close()
    fingerprint = meta.get("model_fingerprint")
    return (str(fingerprint), count) if fingerprint else None


class GalleryInUseError(StoreError):
    """Another process (a running service or reid-reindex) has the gallery open."""


class GalleryLock:
    """An exclusive advisory lock (flock) on ``<database>.lock``, held while a process uses the gallery.

    The kernel drops it when the process dies, kill -9 included, so a crash never leaves a stale lock.
    """

    def __init__(self, database: Path) -> None:
        self.path = Path(database).with_name(Path(database).name + ".lock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(self._fd)
            self._fd = None
            raise GalleryInUseError(
                f"{database} is in use by another process (a running service or reid-reindex): stop it first"
            ) from exc

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


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


def _disk_full(exc: sqlite3.Error) -> bool:
    """SQLITE_FULL: a write needed space the disk (or file-size limit) did not give."""
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(exc)


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


def _embedding_page(
    conn: sqlite3.Connection, collection: str, after: int, chunk: int, upto: int = 2**63 - 1
) -> tuple[np.ndarray, np.ndarray] | None:
    """The next ``chunk`` rows of ``collection`` with ``after`` < faiss id <= ``upto``: (ids (n,) int64,
    embeddings (n, D) float32), or None past the last row."""
    rows = conn.execute(
        "SELECT faiss_id, embedding FROM items WHERE collection = ? AND faiss_id > ? AND faiss_id <= ? "
        "ORDER BY faiss_id LIMIT ?",
        (collection, after, upto, chunk),
    ).fetchall()
    if not rows:
        return None
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), -1)
    return ids, vectors.astype(np.float32)


class GalleryStore:
    """Gallery rows in one SQLite file; thread-safe (one connection, one lock)."""

    def __init__(
        self,
        path: Path,
        embedding_dim: int,
        model_fingerprint: str = "",
        store_crops: bool = True,
        check_meta: bool = True,
    ) -> None:
        self.path = Path(path)
        self.embedding_dim = int(embedding_dim)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.store_crops = store_crops
        self._lock = threading.Lock()
        # isolation_level=None: transactions are opened explicitly with BEGIN IMMEDIATE below.
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.executescript(_SCHEMA)
        if check_meta:
            self._check_meta(model_fingerprint)
        # Item ids are UUIDv7 in faiss id order (galleries from before keep their UUIDv4 ids, all older).
        self._new_id = OrderedIds()
        newest = self._conn.execute("SELECT id FROM items ORDER BY faiss_id DESC LIMIT 1").fetchone()
        self._new_id.resume_after(None if newest is None else str(newest[0]))

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT); the caller holds ``self._lock``.

        Anything raised rolls it back (unless SQLite already did: it does so itself on some errors, a full disk
        among them). A full disk becomes InsufficientStorageError naming ``what`` could not be done.
        """
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            if _disk_full(exc):
                logger.error("disk full while %s: %s (%s)", what, exc, self.path.parent)
                raise InsufficientStorageError(
                    f"the disk holding the gallery is full (SQLite: {exc}) while {what}; nothing was changed and "
                    "everything registered before is kept: free disk space, then retry"
                ) from exc
            raise

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
                raise FingerprintMismatchError(self.path, int(count), stored_fp, model_fingerprint)
            updates = {"schema_version": str(SCHEMA_VERSION), "embedding_dim": str(self.embedding_dim)}
            if model_fingerprint:
                updates["model_fingerprint"] = model_fingerprint
            with self._write("recording the model in the gallery"):
                self._conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", updates.items())

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
        what = f"registering {len(items)} item(s) in collection {collection!r}"
        with self._lock, self._write(what):
            self._conn.execute(
                "INSERT OR IGNORE INTO collections(name, created_at) VALUES (?, ?)", (collection, created)
            )
            for item, blob, meta in zip(items, blobs, metadata, strict=True):
                item_id = self._new_id()
                cursor = self._conn.execute(
                    "INSERT INTO items(id, collection, label, metadata, created_at, sha256, embedding) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (item_id, collection, item.label, meta, created, item.sha256, blob),
                )
                assert cursor.lastrowid is not None
                if self.store_crops and item.crop is not None:
                    self._conn.execute("INSERT INTO crops(faiss_id, data) VALUES (?, ?)", (cursor.lastrowid, item.crop))
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

    def list_items(
        self, collection: str | None, offset: int, limit: int, after: str | None = None
    ) -> tuple[int, list[GalleryRow]]:
        """(total, one page of rows in insertion order), optionally within one collection.

        The page starts at ``offset``, or with ``after`` (an item id) right after that item's place, which is
        found even for a deleted item when its id is time-ordered (UnknownCursorError otherwise).
        """
        where, params = ("WHERE collection = ?", [collection]) if collection is not None else ("", [])
        with self._lock:
            total = self._conn.execute(f"SELECT COUNT(*) FROM items {where}", params).fetchone()[0]
            if after is None:
                page = self._conn.execute(
                    f"SELECT {_ROW_COLUMNS} FROM items {where} ORDER BY faiss_id LIMIT ? OFFSET ?",
                    [*params, limit, offset],
                ).fetchall()
            else:
                start = self._cursor_position(after)
                page = self._conn.execute(
                    f"SELECT {_ROW_COLUMNS} FROM items {where} {'AND' if where else 'WHERE'} faiss_id > ? "
                    "ORDER BY faiss_id LIMIT ?",
                    [*params, start, limit],
                ).fetchall()
        return int(total), [_row(v) for v in page]

    def _cursor_position(self, after: str) -> int:
        """The faiss id a listing continues after (caller holds the lock): the item's own, or for a deleted
        time-ordered id, just below the first time-ordered item registered after it (ids and faiss ids grow
        together)."""
        found = self._conn.execute("SELECT faiss_id FROM items WHERE id = ?", (after,)).fetchone()
        if found is not None:
            return int(found[0])
        if not is_ordered_id(after):
            raise UnknownCursorError(after)
        following = self._conn.execute(
            "SELECT MIN(faiss_id) FROM items WHERE id > ? AND substr(id, 15, 1) = '7'", (after,)
        ).fetchone()[0]
        return 2**63 - 1 if following is None else int(following) - 1

    def delete_item(self, item_id: str) -> GalleryRow | None:
        """Delete one row (committed); returns it, or None when the id is unknown."""
        with self._lock, self._write(f"deleting item {item_id}"):
            found = self._conn.execute(f"SELECT {_ROW_COLUMNS} FROM items WHERE id = ?", (item_id,)).fetchone()
            if found is not None:
                self._conn.execute("DELETE FROM items WHERE id = ?", (item_id,))
                self._conn.execute("INSERT INTO deletions(collection, faiss_id) VALUES (?, ?)", (found[2], found[0]))
        return None if found is None else _row(found)

    def delete_collection(self, name: str) -> list[int] | None:
        """Delete a collection and its rows (committed); returns their faiss ids, or None when unknown."""
        with self._lock, self._write(f"deleting collection {name!r}"):
            exists = self._conn.execute("SELECT 1 FROM collections WHERE name = ?", (name,)).fetchone()
            ids: list[int] = []
            if exists is not None:
                ids = [r[0] for r in self._conn.execute("SELECT faiss_id FROM items WHERE collection = ?", (name,))]
                self._conn.execute("DELETE FROM items WHERE collection = ?", (name,))
                self._conn.execute("DELETE FROM collections WHERE name = ?", (name,))
                self._conn.execute("DELETE FROM deletions WHERE collection = ?", (name,))
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

    def iter_embeddings(
        self, collection: str, chunk: int = 4096, after: int = -1
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (faiss ids (n,), embeddings (n, D) float32) chunks of one collection with faiss id > ``after``."""
        last = after
        while True:
            with self._lock:
                page = _embedding_page(self._conn, collection, last, chunk)
            if page is None:
                return
            yield page
            last = int(page[0][-1])

    # ------------------------------------------------------------ lifecycle: snapshots, crops, model

    def get_crop(self, item_id: str) -> bytes | None:
        """The uploaded file of an item, or None (unknown id, or registered without keeping crops)."""
        with self._lock:
            found = self._conn.execute(
                "SELECT c.data FROM crops c JOIN items i ON i.faiss_id = c.faiss_id WHERE i.id = ?", (item_id,)
            ).fetchone()
        return None if found is None else bytes(found[0])

    def meta(self) -> dict[str, str]:
        with self._lock:
            return dict(self._conn.execute("SELECT key, value FROM meta").fetchall())

    def collection_created_at(self, name: str) -> str | None:
        with self._lock:
            found = self._conn.execute("SELECT created_at FROM collections WHERE name = ?", (name,)).fetchone()
        return None if found is None else str(found[0])

    def faiss_ids(self, collection: str) -> np.ndarray:
        """Sorted faiss ids (n,) int64 of one collection's rows."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT faiss_id FROM items WHERE collection = ? ORDER BY faiss_id", (collection,)
            ).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def deletions_since(self, collection: str, seq: int) -> list[int]:
        """faiss ids deleted from ``collection`` after deletion sequence number ``seq``, in order."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT faiss_id FROM deletions WHERE collection = ? AND seq > ? ORDER BY seq", (collection, seq)
            ).fetchall()
        return [int(r[0]) for r in rows]

    def deletion_seq(self) -> int:
        """The sequence number of the latest delete ever committed (0 before the first)."""
        with self._lock:
            found = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'deletions'").fetchone()
        return 0 if found is None else int(found[0])

    def prune_deletions(self, collection: str, upto_seq: int) -> None:
        """Forget the deletes a snapshot of ``collection`` at ``upto_seq`` already contains."""
        with self._lock, self._write("pruning replayed deletions"):
            self._conn.execute("DELETE FROM deletions WHERE collection = ? AND seq <= ?", (collection, upto_seq))

    @contextmanager
    def read_collection(self, collection: str, chunk: int = 4096) -> Iterator[SourceView]:
        """A view of one collection up to a watermark, for a background index build, on its own connection.

        The watermark (largest faiss id) and the deletion sequence are read together in one short transaction at
        the start; then each chunk of rows with faiss id <= watermark is its own short read. No read transaction
        spans the build, so SQLite can checkpoint (and restart) the WAL meanwhile instead of letting it grow with
        every write. Rows deleted after the start may be missing from the view: the deletes after its deletion
        sequence are replayed on the built index anyway, and no row <= watermark can appear later (ids grow).
        """
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False, timeout=30.0)
        try:
            conn.execute("BEGIN")
            size, watermark = conn.execute(
                "SELECT COUNT(*), COALESCE(MAX(faiss_id), -1) FROM items WHERE collection = ?", (collection,)
            ).fetchone()
            found = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'deletions'").fetchone()
            seq = 0 if found is None else found[0]
            conn.execute("COMMIT")

            def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
                last = -1
                # Outside BEGIN, each SELECT (fetched whole) is a read transaction of its own.
                while (page := _embedding_page(conn, collection, last, chunk, int(watermark))) is not None:
                    yield page
                    last = int(page[0][-1])

            yield SourceView(int(watermark), int(seq), int(size), chunks())
        finally:
            conn.close()

    # ------------------------------------------------------------ reid-reindex

    def begin_reindex(self, fingerprint: str, dim: int) -> tuple[int, int]:
        """Prepare re-embedding for model ``fingerprint``; returns (items already done, items in all).

        Work saved for another target model is discarded; work for the same one is kept (resume).
        """
        with self._lock:
            meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
            with self._write("preparing a re-index"):
                if meta.get("reindex_target") != fingerprint or meta.get("reindex_dim") != str(dim):
                    self._conn.execute("DELETE FROM reindex")
                    self._conn.executemany(
                        "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                        [("reindex_target", fingerprint), ("reindex_dim", str(dim))],
                    )
            done = self._conn.execute(
                "SELECT COUNT(*) FROM reindex r JOIN items i ON i.faiss_id = r.faiss_id"
            ).fetchone()[0]
            total = self._conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        return int(done), int(total)

    def items_without_crop(self) -> int:
        with self._lock:
            return int(
                self._conn.execute(
                    "SELECT COUNT(*) FROM items i LEFT JOIN crops c ON c.faiss_id = i.faiss_id WHERE c.faiss_id IS NULL"
                ).fetchone()[0]
            )

    def crops_to_reindex(self, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` (faiss id, crop bytes) of items not re-embedded yet, in id order."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT i.faiss_id, c.data FROM items i JOIN crops c ON c.faiss_id = i.faiss_id "
                "LEFT JOIN reindex r ON r.faiss_id = i.faiss_id WHERE r.faiss_id IS NULL ORDER BY i.faiss_id LIMIT ?",
                (limit,),
            ).fetchall()
        return [(int(i), bytes(data)) for i, data in rows]

    def save_reindexed(self, faiss_ids: Sequence[int], embeddings: np.ndarray) -> None:
        """Commit the new model's (n, D') embeddings of these items (one transaction)."""
        blobs = [np.ascontiguousarray(e, dtype="<f4").tobytes() for e in embeddings]
        with self._lock, self._write("saving re-embedded items"):
            self._conn.executemany(
                "INSERT OR REPLACE INTO reindex(faiss_id, embedding) VALUES (?, ?)",
                zip(faiss_ids, blobs, strict=True),
            )

    def finish_reindex(self, fingerprint: str, dim: int) -> bool:
        """Switch every item to its new embedding and the gallery to the new model, in one transaction.

        Returns False (nothing changed) when an item still lacks its new embedding (e.g. added meanwhile).
        """
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                missing = self._conn.execute(
                    "SELECT COUNT(*) FROM items i LEFT JOIN reindex r ON r.faiss_id = i.faiss_id "
                    "WHERE r.faiss_id IS NULL"
                ).fetchone()[0]
                if missing:
                    self._conn.execute("ROLLBACK")
                    return False
                self._conn.execute(
                    "UPDATE items SET embedding = (SELECT r.embedding FROM reindex r WHERE r.faiss_id = items.faiss_id)"
                )
                self._conn.execute("DELETE FROM reindex")
                self._conn.execute("DELETE FROM meta WHERE key IN ('reindex_target', 'reindex_dim')")
                self._conn.executemany(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                    [("model_fingerprint", fingerprint), ("embedding_dim", str(dim))],
                )
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
        self.embedding_dim = dim
        return True

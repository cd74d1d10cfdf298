"""Backend ``local``, the embedded default: SQLite is the source of truth, FAISS answers the searches.

A 2xx means the SQLite transaction committed (WAL, synchronous=FULL). Each write pairs a store transaction with
an index update under one lock, so a concurrent delete cannot interleave between them and a failed index update
undoes its commit. At start the indexes are rebuilt from the store.

    gallery = LocalGallery.open(Path("data/gallery.sqlite3"), embedding_dim=512, fingerprint=sha, index_config=cfg)
    gallery.add("match-1", items)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from service.gallery.base import (
    CollectionInfo,
    CollectionNotFoundError,
    DuplicateCropError,
    GalleryHealth,
    GalleryItem,
    GalleryObserver,
    NewItem,
    ScoredItem,
    find_repeats,
)
from service.index import FaissIndexRegistry, IndexConfig
from service.store import GalleryRow, GalleryStore

logger = logging.getLogger(__name__)


def _item(row: GalleryRow) -> GalleryItem:
    return GalleryItem(
        id=row.id,
        collection=row.collection,
        label=row.label,
        metadata=row.metadata,
        created_at=row.created_at,
        sha256=row.sha256,
    )


class _NoObserver:
    def set_gallery_size(self, collection: str, size: int) -> None:
        pass

    def forget_collection(self, collection: str) -> None:
        pass


class LocalGallery:
    """SQLite store + one FAISS index per collection, kept in agreement under one write lock."""

    backend = "local"

    def __init__(self, store: GalleryStore, index: FaissIndexRegistry, observer: GalleryObserver | None = None) -> None:
        if store.embedding_dim != index.dim:
            raise ValueError(f"store holds D={store.embedding_dim}, index expects D={index.dim}")
        self.store = store
        self.index = index
        self.embedding_dim = store.embedding_dim
        self._observer: GalleryObserver = observer or _NoObserver()
        self._write_lock = threading.Lock()

    @classmethod
    def open(
        cls,
        database: Path,
        embedding_dim: int,
        fingerprint: str = "",
        index_config: IndexConfig | None = None,
        observer: GalleryObserver | None = None,
    ) -> LocalGallery:
        """Open (or create) the SQLite file and rebuild every collection's index from it."""
        store = GalleryStore(database, embedding_dim, fingerprint)
        gallery = cls(store, FaissIndexRegistry(embedding_dim, index_config), observer)
        restored = gallery.rebuild_indexes()
        logger.info(
            "rebuilt indexes from %s: %d vectors in %d collections",
            database,
            restored,
            len(gallery.index.collections()),
        )
        return gallery

    def rebuild_indexes(self) -> int:
        """Fill the (empty) FAISS indexes from SQLite; returns the number of vectors."""
        total = 0
        for info in self.store.collections():
            for ids, vectors in self.store.iter_embeddings(info.name):
                self.index.add(info.name, ids, vectors)
                total += len(ids)
            self._observer.set_gallery_size(info.name, self.index.size(info.name))
        return total

    # ------------------------------------------------------------ writes

    def add(self, collection: str, items: Sequence[NewItem]) -> list[GalleryItem]:
        repeats = find_repeats(items)
        if repeats:
            raise DuplicateCropError(collection, repeats)
        with self._write_lock:
            existing = self.store.find_by_sha256(collection, [item.sha256 for item in items])
            if existing:
                raise DuplicateCropError(
                    collection,
                    [(i, existing[item.sha256]) for i, item in enumerate(items) if item.sha256 in existing],
                )
            rows = self.store.insert_items(collection, items)
            ids = np.array([r.faiss_id for r in rows], dtype=np.int64)
            try:
                self.index.add(collection, ids, np.stack([item.embedding for item in items]))
            except Exception:
                # Keep SQLite and the index in agreement: undo the commit, then report the failure.
                logger.exception("index add failed; removing the %d rows just committed", len(rows))
                for row in rows:
                    self.store.delete_item(row.id)
                raise
            self._observer.set_gallery_size(collection, self.index.size(collection))
        return [_item(r) for r in rows]

    def delete(self, item_id: str) -> GalleryItem | None:
        with self._write_lock:
            row = self.store.delete_item(item_id)
            if row is None:
                return None
            self.index.remove(row.collection, np.array([row.faiss_id], dtype=np.int64))
            self._observer.set_gallery_size(row.collection, self.index.size(row.collection))
        return _item(row)

    def drop_collection(self, name: str) -> int | None:
        with self._write_lock:
            ids = self.store.delete_collection(name)
            if ids is None:
                return None
            self.index.drop(name)
            self._observer.forget_collection(name)
        return len(ids)

    # ------------------------------------------------------------ reads

    def search(self, collection: str, queries: np.ndarray, k: int) -> list[list[ScoredItem]]:
        if not self.store.collection_exists(collection):
            raise CollectionNotFoundError(collection)
        hits = self.index.search(collection, queries, k)
        rows = self.store.get_by_faiss_ids([i for per in hits for i, _ in per])
        # A row deleted between the index search and the lookup is simply left out.
        return [[ScoredItem(_item(rows[i]), s) for i, s in per if i in rows] for per in hits]

    def has_collection(self, name: str) -> bool:
        return self.store.collection_exists(name)

    def get(self, item_id: str) -> GalleryItem | None:
        row = self.store.get(item_id)
        return None if row is None else _item(row)

    def list_items(self, collection: str | None, offset: int, limit: int) -> tuple[int, list[GalleryItem]]:
        if collection is not None and not self.store.collection_exists(collection):
            raise CollectionNotFoundError(collection)
        total, rows = self.store.list_items(collection, offset, limit)
        return total, [_item(r) for r in rows]

    def collections(self) -> list[CollectionInfo]:
        return self.store.collections()

    def size(self, collection: str) -> int:
        return self.index.size(collection)

    def health(self) -> GalleryHealth:
        return GalleryHealth(backend=self.backend, ok=True)

    def close(self) -> None:
        self.store.close()

"""Backend ``local``, the embedded default: SQLite is the source of truth, FAISS answers the searches.

A 2xx means the SQLite transaction committed (WAL, synchronous=FULL). Each write pairs a store transaction with
an index update under one lock, so a concurrent delete cannot interleave between them and a failed index update
undoes its commit. Index rebuilds (flat -> HNSW, compaction) run in the background from the store
(service/gallery/local/index.py) and never hold that lock.

Every built index is saved as a snapshot (service/gallery/local/snapshots.py) with its watermark: after a
background build, and at close for collections changed since. At open, a collection loads its snapshot and replays
only the rows added and deleted after the watermark; without a usable snapshot it is loaded as an exact index from
the store (serving at once) and its HNSW index is built in the background.

    gallery = LocalGallery.open(Path("data/gallery.sqlite3"), embedding_dim=512, fingerprint=sha, index_config=cfg)
    gallery.add("match-1", items)
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.core.faults import pause_point
from service.gallery.base import (
    CollectionInfo,
    CollectionNotFoundError,
    DuplicateCropError,
    GalleryHealth,
    GalleryItem,
    GalleryObserver,
    NewItem,
    NoObserver,
    ScoredItem,
    find_repeats,
)
from service.gallery.local.index import BuiltIndex, FaissIndexRegistry, IndexConfig
from service.gallery.local.snapshots import (
    SUFFIX,
    SnapshotHeader,
    SnapshotRejected,
    read_snapshot,
    snapshot_path,
    write_snapshot,
)
from service.gallery.local.store import GalleryLock, GalleryRow, GalleryStore

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


@dataclass
class LoadReport:
    """How the indexes came back at open: from snapshots (plus replay) or rebuilt from the store."""

    from_snapshot: int = 0
    from_store: int = 0
    replayed_adds: int = 0
    replayed_deletes: int = 0
    builds_started: int = 0
    seconds: float = 0.0


class LocalGallery:
    """SQLite store + one FAISS index per collection, kept in agreement under one write lock."""

    backend = "local"

    def __init__(
        self,
        store: GalleryStore,
        index: FaissIndexRegistry,
        observer: GalleryObserver | None = None,
        snapshot_dir: Path | None = None,
        fingerprint: str = "",
    ) -> None:
        if store.embedding_dim != index.dim:
            raise ValueError(f"store holds D={store.embedding_dim}, index expects D={index.dim}")
        self.store = store
        self.index = index
        self.embedding_dim = store.embedding_dim
        self.snapshot_dir = snapshot_dir
        self.fingerprint = fingerprint
        self._observer: GalleryObserver = observer or NoObserver()
        self._write_lock = threading.Lock()
        if index.source is None:
            index.source = store
        if index.on_built is None:
            index.on_built = self._save_built
        self.load_report = LoadReport()
        self._lock_file: GalleryLock | None = None

    @classmethod
    def open(
        cls,
        database: Path,
        embedding_dim: int,
        fingerprint: str = "",
        index_config: IndexConfig | None = None,
        observer: GalleryObserver | None = None,
        store_crops: bool = True,
        snapshots: bool = True,
    ) -> LocalGallery:
        """Open (or create) the SQLite file and bring every collection's index back (snapshot or store).

        Raises FingerprintMismatchError when the gallery holds embeddings of another model, GalleryInUseError
        when another process (a service, reid-reindex) has it open.
        """
        lock = GalleryLock(database)
        try:
            store = GalleryStore(database, embedding_dim, fingerprint, store_crops=store_crops)
            snapshot_dir = Path(database).parent / "indexes" if snapshots else None
            gallery = cls(store, FaissIndexRegistry(embedding_dim, index_config), observer, snapshot_dir, fingerprint)
            gallery._lock_file = lock
            gallery.load_indexes()
        except BaseException:
            lock.release()
            raise
        return gallery

    # ------------------------------------------------------------ loading and snapshots

    def load_indexes(self) -> LoadReport:
        """Fill the (empty) indexes: snapshot + replay where one is usable, else exact from the store."""
        start = time.perf_counter()
        report = LoadReport()
        infos = self.store.collections()
        self._remove_orphan_snapshots({info.name for info in infos})
        self.index.auto_build = False
        try:
            for info in infos:
                if self._load_snapshot(info, report):
                    report.from_snapshot += 1
                else:
                    for ids, vectors in self.store.iter_embeddings(info.name, chunk=16384):
                        self.index.add(info.name, ids, vectors)
                    report.from_store += 1
                self._observer.set_gallery_size(info.name, self.index.size(info.name))
        finally:
            self.index.auto_build = True
        report.builds_started = len(self.index.start_wanted_builds())
        report.seconds = time.perf_counter() - start
        logger.info(
            "indexes of %s ready in %.2f s: %d collections from snapshots (+%d adds, %d deletes replayed), "
            "%d from the store, %d background builds started",
            self.store.path,
            report.seconds,
            report.from_snapshot,
            report.replayed_adds,
            report.replayed_deletes,
            report.from_store,
            report.builds_started,
        )
        self.load_report = report
        return report

    def rebuild_indexes(self) -> int:
        """Load every collection from the store, ignoring snapshots, and wait for the builds it calls for.

        The pre-snapshot start-up path, kept for benchmarks that time a full rebuild; returns the vector count.
        """
        snapshot_dir, self.snapshot_dir = self.snapshot_dir, None
        try:
            self.load_indexes()
        finally:
            self.snapshot_dir = snapshot_dir
        self.index.wait_for_builds()
        return sum(self.index.size(name) for name in self.index.collections())

    def _expected(self, name: str, created_at: str, kind: str = "") -> SnapshotHeader:
        return SnapshotHeader(name, created_at, self.fingerprint, self.embedding_dim, kind)

    def _load_snapshot(self, info: CollectionInfo, report: LoadReport) -> bool:
        if self.snapshot_dir is None:
            return False
        path = snapshot_path(self.snapshot_dir, info.name)
        try:
            cpu_index, header, tombstones = read_snapshot(
                path, self._expected(info.name, info.created_at), self.index.config.build_settings
            )
        except SnapshotRejected as exc:
            logger.warning("snapshot of collection %r not used (%s): rebuilding it from the store", info.name, exc)
            return False
        self.index.install(info.name, cpu_index, header.kind, tombstones)
        try:
            for ids, vectors in self.store.iter_embeddings(info.name, chunk=16384, after=header.watermark_id):
                self.index.add(info.name, ids, vectors)
                report.replayed_adds += len(ids)
            deleted = self.store.deletions_since(info.name, header.deletion_seq)
            if deleted:
                report.replayed_deletes += self.index.remove(info.name, np.array(deleted, dtype=np.int64))
        except ValueError as exc:
            # A watermark that does not describe the file (the header checksum makes this unlikely): rebuild.
            logger.warning("snapshot of collection %r cannot be replayed onto (%s): rebuilding", info.name, exc)
            self.index.drop(info.name)
            return False
        if not np.array_equal(self.index.live_ids(info.name), self.store.faiss_ids(info.name)):
            logger.warning("snapshot of collection %r disagrees with the store after replay: rebuilding", info.name)
            self.index.drop(info.name)
            return False
        logger.info(
            "collection %r: %s snapshot loaded (watermark id %d, deletion seq %d)",
            info.name,
            header.kind,
            header.watermark_id,
            header.deletion_seq,
        )
        return True

    def _remove_orphan_snapshots(self, names: set[str]) -> None:
        if self.snapshot_dir is None or not self.snapshot_dir.is_dir():
            return
        for path in self.snapshot_dir.iterdir():
            if path.name.endswith(SUFFIX + ".tmp"):
                logger.info("removing %s, a snapshot whose writing was interrupted", path.name)
                path.unlink(missing_ok=True)
            elif path.name.endswith(SUFFIX) and path.name[: -len(SUFFIX)] not in names:
                logger.info("removing %s: its collection no longer exists", path.name)
                path.unlink(missing_ok=True)

    def _save_built(self, collection: str, built: BuiltIndex) -> None:
        """Builder thread, before the swap: persist the new index with its watermark."""
        pause_point("build")
        if self.snapshot_dir is None:
            return
        created_at = self.store.collection_created_at(collection)
        if created_at is None:
            return  # dropped meanwhile
        self._write_snapshot(
            collection, created_at, built.index, built.kind, set(), built.watermark_id, built.deletion_seq
        )

    def _write_snapshot(
        self,
        collection: str,
        created_at: str,
        cpu_index: object,
        kind: str,
        tombstones: set[int],
        watermark_id: int,
        deletion_seq: int,
    ) -> None:
        assert self.snapshot_dir is not None
        start = time.perf_counter()
        header = SnapshotHeader(
            collection,
            created_at,
            self.fingerprint,
            self.embedding_dim,
            kind,
            self.index.config.build_settings(kind),
            watermark_id,
            deletion_seq,
        )
        path = write_snapshot(self.snapshot_dir, header, cpu_index, tombstones)
        # The snapshot holds every delete up to deletion_seq: only later ones need replaying.
        self.store.prune_deletions(collection, deletion_seq)
        logger.info(
            "saved %s snapshot of %r (%d MiB, watermark id %d) in %.2f s",
            kind,
            collection,
            path.stat().st_size >> 20,
            watermark_id,
            time.perf_counter() - start,
        )

    def save_snapshots(self) -> int:
        """Snapshot every collection changed since its last snapshot (no build running); returns how many."""
        if self.snapshot_dir is None:
            return 0
        saved = 0
        with self._write_lock:
            deletion_seq = self.store.deletion_seq()
            for name in self.index.collections():
                created_at = self.store.collection_created_at(name)
                if created_at is None:
                    continue

                saved += int(
                    self.index.export(name, functools.partial(self._write_export, name, created_at, deletion_seq))
                )
        return saved

    def _write_export(
        self,
        name: str,
        created_at: str,
        deletion_seq: int,
        cpu_index: Any,
        kind: str,
        tombstones: set[int],
        max_id: int,
    ) -> None:
        self._write_snapshot(name, created_at, cpu_index, kind, tombstones, max_id, deletion_seq)

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
            if self.snapshot_dir is not None:
                snapshot_path(self.snapshot_dir, name).unlink(missing_ok=True)
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

    def get_image(self, item_id: str) -> bytes | None:
        return self.store.get_crop(item_id)

    def list_items(
        self, collection: str | None, offset: int, limit: int, after: str | None = None
    ) -> tuple[int, list[GalleryItem]]:
        if collection is not None and not self.store.collection_exists(collection):
            raise CollectionNotFoundError(collection)
        total, rows = self.store.list_items(collection, offset, limit, after)
        return total, [_item(r) for r in rows]

    def collections(self) -> list[CollectionInfo]:
        return self.store.collections()

    def size(self, collection: str) -> int:
        return self.index.size(collection)

    def health(self) -> GalleryHealth:
        return GalleryHealth(backend=self.backend, ok=True)

    def abandon(self) -> None:
        """Stop without the close-time snapshots, leaving the files as a kill -9 would (tests, benchmarks)."""
        self.index.close()
        self.store.close()
        if self._lock_file is not None:
            self._lock_file.release()

    def close(self) -> None:
        """Stop background builds, snapshot what changed since the last snapshot, close the store."""
        self.index.close()
        try:
            self.save_snapshots()
        except Exception:
            logger.exception("could not save index snapshots at close; the next start rebuilds from the store")
        self.index.release_all()
        self.store.close()
        if self._lock_file is not None:
            self._lock_file.release()

"""Vector index per collection (FAISS), rebuilt in the background and swapped in atomically.

Embeddings are L2-normalised, so inner product = cosine similarity. A collection starts as an exact
IndexIDMap2(IndexFlatIP) (on the GPU when one is configured); past ``hnsw_min_size`` vectors it is rebuilt as
IndexHNSWFlat (inner product). HNSW graphs and GPU flat indexes cannot drop vectors: deletes become tombstones,
and once they pile up the collection is compacted by a rebuild. On the CPU the tombstones are filtered inside the
FAISS search (an ID selector over a bitmap of deleted ids, passed in the search parameters), so a search costs the
same with 0 or 30% of the collection deleted. GPU flat search takes no selector and returns at most 2048
neighbours: it fetches k + tombstones up to that cap, and a query left short by the cap is answered by an exact
scan of the index's vectors, so the answer is right whatever the number of deletes.

Rebuilds never run on the request path. A build reads the collection from a ``VectorSource`` (the SQLite store
in the service: a consistent read up to a watermark) in one builder thread while the old index keeps answering;
vectors added meanwhile go to a small exact *delta* index searched alongside, deletes meanwhile hide in both and
are replayed onto the new index, which then takes the delta's vectors and replaces the old one under the
collection lock. No Python copy of the vectors is kept: FAISS holds the only one in memory.

FAISS is not safe for concurrent add + search on one index, so every collection has its own lock; callers run
these methods in a thread pool, never on the event loop.

    registry = FaissIndexRegistry(dim=512)
    registry.add("match-1", ids=np.array([1, 2]), vectors=emb)   # emb (2, 512) float32, unit rows
    hits = registry.search("match-1", queries, k=10)              # list (one per query) of [(id, score)]
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import faiss
import numpy as np

from service.gallery.local.gpu_faiss import GpuFaissOwner, gpu_faiss_available

__all__ = [
    "BuiltIndex",
    "FaissIndexRegistry",
    "IndexConfig",
    "SourceView",
    "VectorIndex",
    "VectorSource",
    "gpu_faiss_available",
]

logger = logging.getLogger(__name__)

Hit = tuple[int, float]


class VectorIndex(Protocol):
    """What the gallery needs from a vector index: per-collection add / remove / search / size."""

    def add(self, collection: str, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    def remove(self, collection: str, ids: np.ndarray) -> int: ...

    def search(self, collection: str, queries: np.ndarray, k: int) -> list[list[Hit]]: ...

    def size(self, collection: str) -> int: ...

    def drop(self, collection: str) -> None: ...

    def collections(self) -> list[str]: ...


@dataclass(frozen=True)
class IndexConfig:
    """When to leave exact search, the HNSW knobs used after that, when to compact, and the GPU device."""

    hnsw_min_size: int = 50_000
    hnsw_m: int = 16
    hnsw_ef_construction: int = 100
    hnsw_ef_search: int = 128
    use_gpu: bool = False
    gpu_device: int = 0
    # Compaction starts once tombstones exceed max(compact_min_tombstones, compact_fraction x size).
    compact_min_tombstones: int = 64
    compact_fraction: float = 0.1

    def build_settings(self, kind: str) -> dict[str, int]:
        """What an index of ``kind`` was built with; a snapshot with other values is not reused."""
        if kind == "hnsw":
            return {"hnsw_m": self.hnsw_m, "hnsw_ef_construction": self.hnsw_ef_construction}
        return {}


@dataclass(frozen=True)
class SourceView:
    """A consistent read of one collection: ``size`` rows, every id <= ``watermark_id``, as of ``deletion_seq``.

    ``chunks`` yields (ids (n,) int64, vectors (n, D) float32) in id order.
    """

    watermark_id: int
    deletion_seq: int
    size: int
    chunks: Iterable[tuple[np.ndarray, np.ndarray]]


class VectorSource(Protocol):
    """Where rebuilds read a collection from (the durable store in the service)."""

    def read_collection(self, collection: str) -> AbstractContextManager[SourceView]: ...


@dataclass
class BuiltIndex:
    """A freshly built CPU index of one collection and the source state it contains (its watermark)."""

    index: Any
    kind: str
    watermark_id: int
    deletion_seq: int
    size: int


class BuildAborted(RuntimeError):
    """The registry closed (or the collection went) while a build ran."""


# The most neighbours one GPU FAISS search returns (faiss' GPU k-selection limit).
GPU_MAX_FETCH = 2048


class TombstoneFilter:
    """Ids deleted from an index that cannot drop vectors, as a bitmap FAISS reads during the search.

    ``selector`` accepts every id whose bit is not set (IDSelectorNot over IDSelectorBitmap); it points into
    ``bits`` (ceil((max id + 1) / 8),) uint8, which grows by doubling and is replaced, never freed, while a selector
    made over it may be in use: callers hold the collection lock for both.
    """

    def __init__(self, ids: Iterable[int] = ()) -> None:
        self._ids: set[int] = set()
        self.bits = np.zeros(0, dtype=np.uint8)
        self._selector: Any = None
        self._inner: Any = None
        for i in ids:
            self.add(int(i))

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._ids

    def __iter__(self) -> Iterator[int]:
        return iter(self._ids)

    def ids(self) -> set[int]:
        return set(self._ids)

    def add(self, item_id: int) -> None:
        byte = item_id >> 3
        if byte >= len(self.bits):
            grown = np.zeros(max(2 * len(self.bits), byte + 1, 1024), dtype=np.uint8)
            grown[: len(self.bits)] = self.bits
            self.bits = grown
            self._selector = None  # the old one points into the old array
        self.bits[byte] |= np.uint8(1 << (item_id & 7))
        self._ids.add(item_id)

    def bits_clear(self, ids: np.ndarray) -> np.ndarray:
        """(n,) bool: True where the id in ``ids`` (n,) int64 is not deleted."""
        clear = np.ones(len(ids), dtype=bool)
        if self._ids:
            byte = ids >> 3
            inside = byte < len(self.bits)
            clear[inside] = (self.bits[byte[inside]] >> (ids[inside] & 7).astype(np.uint8)) & 1 == 0
        return clear

    def selector(self) -> Any:
        """An IDSelector accepting the live ids (None when nothing is deleted)."""
        if not self._ids:
            return None
        if self._selector is None:
            self._inner = faiss.IDSelectorBitmap(len(self.bits), faiss.swig_ptr(self.bits))
            self._selector = faiss.IDSelectorNot(self._inner)
        return self._selector


def _flat_cpu(dim: int) -> Any:
    # Any: the faiss stubs miss the SWIG wrappers' numpy conveniences (remove_ids(array), downcasts).
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def _hnsw_cpu(dim: int, config: IndexConfig) -> Any:
    hnsw = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = config.hnsw_ef_construction
    hnsw.hnsw.efSearch = config.hnsw_ef_search
    return faiss.IndexIDMap2(hnsw)


def index_contents(index: Any) -> tuple[np.ndarray, np.ndarray]:
    """(ids (n,) int64, vectors (n, D) float32) held by a CPU IndexIDMap2 (flat or HNSW-flat inside)."""
    ids = faiss.vector_to_array(index.id_map).astype(np.int64)
    if len(ids) == 0:
        return ids, np.zeros((0, index.d), dtype=np.float32)
    return ids, index.index.reconstruct_n(0, index.ntotal)


class _CollectionIndex:
    """One collection: the serving index, a delta index while a build runs, tombstones, a live count."""

    def __init__(self, dim: int, config: IndexConfig, gpu: GpuFaissOwner | None) -> None:
        self.dim = dim
        self.config = config
        self.lock = threading.Lock()
        self.gpu = gpu
        self.kind = "flat"
        self.on_gpu = False
        self.main: Any = _flat_cpu(dim)
        self.tombstones = TombstoneFilter()
        self._install(_flat_cpu(dim), "flat", set())
        self.delta: Any | None = None
        self.count = 0
        self.max_id = -1
        self.building = False
        self.generation = 0
        self.build_deletes: list[int] = []
        self.changes = 0  # adds + deletes since the last snapshot (or load)

    # ---------------------------------------------------------------- helpers

    def _install(self, cpu_index: Any, kind: str, tombstones: set[int]) -> None:
        """Make ``cpu_index`` the serving index (copied to the GPU for a flat index when one is owned).

        The index it replaces is freed here; a GPU one under the owner's lock (see ``release``).
        """
        if kind == "flat" and self.gpu is not None:
            new, on_gpu = self.gpu.to_gpu(cpu_index), True
        else:
            new, on_gpu = cpu_index, False
        self.release()
        self.main, self.on_gpu = new, on_gpu
        self.kind = kind
        self.tombstones = TombstoneFilter(tombstones)

    def release(self) -> None:
        """Replace the serving index by an empty CPU one; a GPU index is freed under the owner's lock (FAISS frees
        its GPU memory through the resources object every other call uses, so that must not overlap a search)."""
        empty = _flat_cpu(self.dim)
        if self.on_gpu and self.gpu is not None:
            with self.gpu.use():
                # self.main is the only reference: the GPU index is destroyed inside this block.
                self.main = empty
        else:
            self.main = empty
        self.on_gpu = False
        self.kind = "flat"
        self.tombstones = TombstoneFilter()

    def _device(self) -> AbstractContextManager[Any]:
        """The GPU owner's lock when the serving index lives on the GPU (every call on it goes through it)."""
        return self.gpu.use() if self.on_gpu and self.gpu is not None else contextlib.nullcontext()

    def _in_main(self, item_id: int) -> bool:
        if item_id in self.tombstones:
            return False
        try:
            with self._device():
                self.main.reconstruct(item_id)
        except RuntimeError:  # IndexIDMap2 raises on an unknown id
            return False
        return True

    def _in_delta(self, item_id: int) -> bool:
        if self.delta is None:
            return False
        try:
            self.delta.reconstruct(item_id)
        except RuntimeError:
            return False
        return True

    def desired_kind(self, size: int) -> str:
        """HNSW from hnsw_min_size; back to flat only below half of it (no flapping at the boundary)."""
        minimum = self.config.hnsw_min_size
        if size >= minimum or (self.kind == "hnsw" and size >= minimum // 2):
            return "hnsw"
        return "flat"

    def wants_build(self) -> bool:
        if self.building:
            return False
        if self.desired_kind(self.count) != self.kind:
            return True
        limit = max(self.config.compact_min_tombstones, int(self.count * self.config.compact_fraction))
        return len(self.tombstones) > limit

    # ---------------------------------------------------------------- serving

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(np.unique(ids)) != len(ids):
            raise ValueError("the same id is given twice")
        if len(ids) and int(ids.min()) <= self.max_id:
            # Ids from the store only grow; anything else is checked one by one.
            for i in ids.tolist():
                if self._in_main(i) or self._in_delta(i):
                    raise ValueError(f"id {i} is already in the index")
        if self.building:
            assert self.delta is not None
            self.delta.add_with_ids(vectors, ids)
        else:
            with self._device():
                self.main.add_with_ids(vectors, ids)
        self.count += len(ids)
        self.changes += len(ids)
        if len(ids):
            self.max_id = max(self.max_id, int(ids.max()))

    def remove(self, ids: np.ndarray) -> int:
        if self.kind == "flat" and not self.on_gpu and self.delta is None and not self.building:
            # One pass over the flat index for the whole batch (one call per id would move the vectors each time).
            removed = int(self.main.remove_ids(np.unique(ids)))
            self.count -= removed
            self.changes += removed
            return removed
        removed = 0
        for i in ids.tolist():
            one = np.array([i], dtype=np.int64)
            if self.delta is not None and self.delta.remove_ids(one):
                hit = True
            elif self.kind == "flat" and not self.on_gpu:
                hit = bool(self.main.remove_ids(one))
            elif self._in_main(i):
                # HNSW graphs and GPU flat indexes cannot drop vectors: hide them until the next build.
                self.tombstones.add(i)
                hit = True
            else:
                hit = False
            if hit:
                removed += 1
                if self.building:
                    self.build_deletes.append(i)
        self.count -= removed
        self.changes += removed
        return removed

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """(Q, D) queries -> per query up to k (id, score), best first, deleted ids never among them."""
        nq = queries.shape[0]
        if self.count == 0:
            return [[] for _ in range(nq)]
        rows: list[list[Hit]] = [[] for _ in range(nq)]
        if self.main.ntotal:
            rows = self._search_gpu(queries, k) if self.on_gpu else self._search_cpu(queries, k)
        if self.delta is not None and self.delta.ntotal:
            scores, ids = self.delta.search(queries, min(k, self.delta.ntotal))
            for row, (row_ids, row_scores) in enumerate(zip(ids, scores, strict=True)):
                merged = rows[row] + [(int(i), float(s)) for i, s in zip(row_ids, row_scores, strict=True) if i >= 0]
                merged.sort(key=lambda hit: -hit[1])
                rows[row] = merged
        return [row[:k] for row in rows]

    def _hits(self, ids: np.ndarray, scores: np.ndarray) -> list[list[Hit]]:
        return [
            [
                (int(i), float(s))
                for i, s in zip(row_ids, row_scores, strict=True)
                if i >= 0 and int(i) not in self.tombstones
            ]
            for row_ids, row_scores in zip(ids, scores, strict=True)
        ]

    def _search_cpu(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """FAISS skips the tombstones itself (the selector): k neighbours are fetched, not k + tombstones, and the
        HNSW beam grows with the deleted share (hnsw_ef), not with the number of deleted items."""
        fetch = min(k, int(self.main.ntotal))
        selector = self.tombstones.selector()
        params: Any = None
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # missing from the faiss stubs
            params.efSearch = max(self.hnsw_ef(), fetch)
        elif selector is not None:
            params = faiss.SearchParameters()
        if params is not None and selector is not None:
            params.sel = selector
        scores, ids = self.main.search(queries, fetch, params=params)
        return self._hits(ids, scores)

    def hnsw_ef(self) -> int:
        """The HNSW beam width: the configured one, widened by 1 / (live share) while tombstones wait for
        compaction (at most 2x), so the beam holds as many live vectors as without deletes and recall stays."""
        total = int(self.main.ntotal)
        live_share = max(0.5, (total - len(self.tombstones)) / total) if total else 1.0
        return math.ceil(self.config.hnsw_ef_search / live_share)

    def _search_gpu(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """GPU flat: no selector there, and at most GPU_MAX_FETCH neighbours per search. Fetch k + tombstones up
        to that cap and drop the tombstones; a query the cap left short of k live hits gets an exact scan."""
        total = int(self.main.ntotal)
        fetch = min(k + len(self.tombstones), total, GPU_MAX_FETCH)
        with self._device():
            scores, ids = self.main.search(queries, fetch)
        rows = self._hits(ids, scores)
        live_in_main = total - len(self.tombstones)
        short = [r for r, row in enumerate(rows) if len(row) < min(k, live_in_main)]
        if short and fetch < total:
            logger.info(
                "%d tombstones exceed what one GPU search returns: exact scan for %d queries",
                len(self.tombstones),
                len(short),
            )
            for r, row in zip(short, self._scan_gpu(queries[short], k), strict=True):
                rows[r] = row
        return rows

    def _scan_gpu(self, queries: np.ndarray, k: int, chunk: int = 65536) -> list[list[Hit]]:
        """Exact top-k of (Q, D) queries over the GPU index's live vectors, read back in chunks (under the lock)."""
        best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
        best_ids = np.zeros((len(queries), 0), dtype=np.int64)
        with self._device():
            all_ids = faiss.vector_to_array(self.main.id_map).astype(np.int64)
            inner = self.main.index
            for start in range(0, len(all_ids), chunk):
                stop = min(start + chunk, len(all_ids))
                ids = all_ids[start:stop]
                vectors = inner.reconstruct_n(start, stop - start)
                keep = self.tombstones.bits_clear(ids)
                scores = queries @ vectors[keep].T
                best_scores = np.concatenate([best_scores, scores], axis=1)
                best_ids = np.concatenate([best_ids, np.broadcast_to(ids[keep], scores.shape)], axis=1)
                if best_scores.shape[1] > k:
                    top = np.argpartition(-best_scores, k - 1, axis=1)[:, :k]
                    best_scores = np.take_along_axis(best_scores, top, axis=1)
                    best_ids = np.take_along_axis(best_ids, top, axis=1)
        order = np.argsort(-best_scores, axis=1, kind="stable")
        best_scores = np.take_along_axis(best_scores, order, axis=1)
        best_ids = np.take_along_axis(best_ids, order, axis=1)
        return [
            [(int(i), float(s)) for i, s in zip(ri, rs, strict=True)]
            for ri, rs in zip(best_ids, best_scores, strict=True)
        ]

    # ---------------------------------------------------------------- builds

    def begin_build(self, copy_vectors: bool) -> tuple[int, SourceView | None]:
        """Start collecting adds in the delta; returns (its generation, a copy of the live vectors when asked)."""
        self.building = True
        if self.delta is None:
            self.delta = _flat_cpu(self.dim)
        # else: a failed build could not hand its delta back; this build takes it over (its ids are in the store,
        # and delta_to_merge / merge_into skip those the new index already holds).
        self.build_deletes = []
        view = None
        if copy_vectors:
            cpu = self.gpu.to_cpu(self.main) if self.on_gpu and self.gpu is not None else self.main
            ids, vectors = index_contents(cpu)
            keep = ~np.isin(ids, np.fromiter(self.tombstones, dtype=np.int64, count=len(self.tombstones)))
            ids, vectors = ids[keep], vectors[keep]
            view = SourceView(int(ids.max()) if len(ids) else -1, -1, len(ids), [(ids, vectors)])
        return self.generation, view

    def delta_to_merge(self, merged: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) in the delta not yet in ``merged`` (sorted ids already copied to the new index)."""
        assert self.delta is not None
        ids, vectors = index_contents(self.delta)
        todo = ~np.isin(ids, merged)
        return ids[todo], vectors[todo]

    @staticmethod
    def merge_into(new: Any, built: BuiltIndex, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add delta vectors to ``new``, skipping those its source read already contained."""
        fresh = ids > built.watermark_id
        for j in np.flatnonzero(~fresh):
            # Added after the build started but before the source was read: usually already in ``new``.
            try:
                new.reconstruct(int(ids[j]))
            except RuntimeError:
                fresh[j] = True
        if fresh.any():
            new.add_with_ids(vectors[fresh], ids[fresh])

    def finish_build(self, build_generation: int, built: BuiltIndex, merged: np.ndarray) -> None:
        """Swap ``built`` in: replay the deletes made meanwhile, then take over the rest of the delta."""
        if build_generation != self.generation:
            return
        new = built.index
        ids, vectors = self.delta_to_merge(merged)
        if len(ids):
            self.merge_into(new, built, ids, vectors)
        new_tombstones: set[int] = set()
        for i in self.build_deletes:
            one = np.array([i], dtype=np.int64)
            if built.kind == "flat":
                new.remove_ids(one)
            else:
                with contextlib.suppress(RuntimeError):
                    new.reconstruct(i)
                    new_tombstones.add(i)
        previous = self.kind
        self._install(new, built.kind, new_tombstones)
        live = int(new.ntotal) - len(new_tombstones)
        if live != self.count:
            logger.error("rebuilt index holds %d vectors, %d expected; keeping the index's count", live, self.count)
            self.count = live
        self._end_build()
        if previous != self.kind:
            logger.info("collection index switched %s -> %s at %d vectors", previous, self.kind, self.count)

    def abort_build(self, build_generation: int) -> None:
        """The build failed: the old index keeps serving and takes the delta's vectors back."""
        if build_generation != self.generation or self.delta is None:
            return
        ids, vectors = index_contents(self.delta)
        if len(ids):
            with self._device():
                self.main.add_with_ids(vectors, ids)
        self._end_build()

    def give_up_build(self, build_generation: int) -> None:
        """Even the abort failed: stop building anyway and keep the delta searched beside the old index until the
        next build takes it over, so nothing registered disappears and later builds can still start."""
        if build_generation != self.generation:
            return
        self.building = False
        self.build_deletes = []

    def _end_build(self) -> None:
        self.delta = None
        self.building = False
        self.build_deletes = []


BuildHook = Callable[[str, str], None]


class FaissIndexRegistry:
    """FAISS implementation of VectorIndex: one _CollectionIndex per collection, each with its own lock.

    ``source`` is where background builds read vectors (None: a copy of the index's own vectors, taken under
    the collection lock); ``on_built(collection, built)`` runs in the builder thread before the swap (the
    gallery writes its snapshot there). ``build_hook(collection, point)`` lets tests pause a build.
    """

    # Delta vectors left for the swap itself, under the collection lock (an HNSW add of ~1k takes tens of ms).
    CATCH_UP_UNDER_LOCK = 1024

    def __init__(
        self,
        dim: int,
        config: IndexConfig | None = None,
        source: VectorSource | None = None,
        on_built: Callable[[str, BuiltIndex], None] | None = None,
        gpu: GpuFaissOwner | None = None,
    ) -> None:
        self.dim = dim
        self.config = config or IndexConfig()
        self.source = source
        self.on_built = on_built
        self.build_hook: BuildHook | None = None
        self._lock = threading.Lock()
        self._collections: dict[str, _CollectionIndex] = {}
        self.gpu = (
            gpu if gpu is not None else (GpuFaissOwner.create(self.config.gpu_device) if self.config.use_gpu else None)
        )
        self._builder = ThreadPoolExecutor(1, thread_name_prefix="reid-index-build")
        self._builds: dict[str, Future[None]] = {}
        self._closing = threading.Event()
        self.builds_finished = 0
        # Off while the gallery loads its collections: one build per collection after loading, not midway.
        self.auto_build = True

    def _get(self, collection: str, create: bool = False) -> _CollectionIndex | None:
        with self._lock:
            index = self._collections.get(collection)
            if index is None and create:
                index = _CollectionIndex(self.dim, self.config, self.gpu)
                self._collections[collection] = index
            return index

    def _check(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected vectors (N, {self.dim}), got {vectors.shape}")
        return vectors

    def add(self, collection: str, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add (N, D) unit vectors under int64 ids; an id already present raises ValueError."""
        vectors = self._check(vectors)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if ids.shape != (vectors.shape[0],):
            raise ValueError(f"{ids.shape[0]} ids for {vectors.shape[0]} vectors")
        index = self._get(collection, create=True)
        assert index is not None
        with index.lock:
            index.add(ids, vectors)
            self._maybe_build(collection, index)

    def remove(self, collection: str, ids: np.ndarray) -> int:
        """Remove ids (unknown ones are ignored); returns how many were removed."""
        index = self._get(collection)
        if index is None:
            return 0
        with index.lock:
            removed = index.remove(np.asarray(ids, dtype=np.int64).reshape(-1))
            self._maybe_build(collection, index)
            return removed

    def search(self, collection: str, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """(Q, D) queries -> per query up to k (id, cosine score) pairs, best first; unknown collection: []"""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        queries = self._check(queries)
        index = self._get(collection)
        if index is None:
            return [[] for _ in range(queries.shape[0])]
        with index.lock:
            return index.search(queries, k)

    def size(self, collection: str) -> int:
        index = self._get(collection)
        return 0 if index is None else index.count

    def kind(self, collection: str) -> str | None:
        """'flat' or 'hnsw' (None for an unknown collection); for /info and tests."""
        index = self._get(collection)
        return None if index is None else index.kind

    def stats(self, collection: str) -> dict[str, Any] | None:
        """Kind, size, tombstones, whether a build runs and the delta's size; None for an unknown collection."""
        index = self._get(collection)
        if index is None:
            return None
        with index.lock:
            return {
                "kind": index.kind,
                "size": index.count,
                "tombstones": len(index.tombstones),
                "building": index.building,
                "delta": 0 if index.delta is None else int(index.delta.ntotal),
                "on_gpu": index.on_gpu,
            }

    def drop(self, collection: str) -> None:
        with self._lock:
            index = self._collections.pop(collection, None)
        if index is not None:
            with index.lock:
                index.generation += 1  # a build still running for it is thrown away
                index.release()
                index.count = 0

    def collections(self) -> list[str]:
        with self._lock:
            return sorted(self._collections)

    # ---------------------------------------------------------------- loading and snapshots

    def install(self, collection: str, cpu_index: Any, kind: str, tombstones: set[int]) -> None:
        """Serve ``cpu_index`` (e.g. loaded from a snapshot) for ``collection``, replacing what was there."""
        index = self._get(collection, create=True)
        assert index is not None
        with index.lock:
            index.generation += 1
            index._end_build()
            index._install(cpu_index, kind, set(tombstones))
            index.count = int(cpu_index.ntotal) - len(index.tombstones)
            ids = faiss.vector_to_array(cpu_index.id_map)
            index.max_id = int(ids.max()) if len(ids) else -1
            index.changes = 0

    def live_ids(self, collection: str) -> np.ndarray:
        """Sorted ids (n,) int64 the collection's index answers with (tombstones excluded)."""
        index = self._get(collection)
        if index is None:
            return np.zeros(0, dtype=np.int64)
        with index.lock:
            parts = [faiss.vector_to_array(index.main.id_map)]
            if index.delta is not None:
                parts.append(faiss.vector_to_array(index.delta.id_map))
            ids = np.concatenate(parts).astype(np.int64)
            if index.tombstones:
                ids = ids[~np.isin(ids, np.fromiter(index.tombstones, dtype=np.int64))]
        return np.sort(ids)

    def export(
        self, collection: str, write: Callable[[Any, str, set[int], int], None], only_if_changed: bool = True
    ) -> bool:
        """Call ``write(cpu_index, kind, tombstones, max_id)`` on the serving index under the collection lock
        (no copy of the index is made; a GPU index is copied to the CPU). Skipped (False) while a build runs (it
        writes its own snapshot) or, with only_if_changed, when nothing changed since the last snapshot or load."""
        index = self._get(collection)
        if index is None:
            return False
        with index.lock:
            # A delta left by a failed build is not in the serving index: the next build snapshots it all.
            if index.building or index.delta is not None or (only_if_changed and index.changes == 0):
                return False
            cpu = index.gpu.to_cpu(index.main) if index.on_gpu and index.gpu is not None else index.main
            write(cpu, index.kind, set(index.tombstones), index.max_id)
            index.changes = 0
            return True

    # ---------------------------------------------------------------- background builds

    def schedule_build(self, collection: str) -> bool:
        """Start a background rebuild of ``collection`` unless one runs; returns whether one was started."""
        index = self._get(collection)
        if index is None:
            return False
        with index.lock:
            if index.building:
                return False
            self._start_build(collection, index)
            return True

    def _maybe_build(self, collection: str, index: _CollectionIndex) -> None:
        if self.auto_build and index.wants_build() and not self._closing.is_set():
            self._start_build(collection, index)

    def start_wanted_builds(self) -> list[str]:
        """Start a build for every collection whose size or tombstones call for one; returns their names."""
        started = []
        for name in self.collections():
            index = self._get(name)
            if index is None:
                continue
            with index.lock:
                if index.wants_build() and not self._closing.is_set():
                    self._start_build(name, index)
                    started.append(name)
        return started

    def _start_build(self, collection: str, index: _CollectionIndex) -> None:
        # Called with index.lock held: from here on adds go to the delta, so nothing is missed.
        build_generation, copied = index.begin_build(copy_vectors=self.source is None)
        kind = index.desired_kind(index.count)
        logger.info("background %s build of %r started at %d vectors", kind, collection, index.count)
        self._builds[collection] = self._builder.submit(self._run_build, collection, index, build_generation, copied)

    def _hook(self, collection: str, point: str) -> None:
        if self.build_hook is not None:
            self.build_hook(collection, point)

    def _build_from(self, view: SourceView, kind: str) -> BuiltIndex:
        index = _hnsw_cpu(self.dim, self.config) if kind == "hnsw" else _flat_cpu(self.dim)
        for ids, vectors in view.chunks:
            if self._closing.is_set():
                raise BuildAborted("registry closing")
            index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
        return BuiltIndex(index, kind, view.watermark_id, view.deletion_seq, int(index.ntotal))

    def _run_build(
        self, collection: str, index: _CollectionIndex, build_generation: int, copied: SourceView | None
    ) -> None:
        try:
            self._hook(collection, "start")
            with contextlib.ExitStack() as stack:
                view = copied if copied is not None else stack.enter_context(self._read(collection))
                kind = index.desired_kind(view.size)
                built = self._build_from(view, kind)
            self._hook(collection, "built")
            if self.on_built is not None and build_generation == index.generation:
                try:
                    self.on_built(collection, built)
                except Exception:
                    logger.exception("could not save the snapshot of %r; the index is still swapped in", collection)
            merged = self._catch_up(index, build_generation, built)
            with index.lock:
                index.finish_build(build_generation, built, merged)
            self.builds_finished += 1
            logger.info("background %s build of %r done: %d vectors", kind, collection, built.size)
        except BaseException as exc:
            if isinstance(exc, BuildAborted):
                logger.info("background build of %r abandoned: %s", collection, exc)
            else:
                logger.exception("background build of %r failed; the previous index keeps serving", collection)
            with index.lock:
                try:
                    index.abort_build(build_generation)
                except Exception:
                    logger.exception(
                        "could not hand the build's delta of %r back; keeping it beside the index", collection
                    )
                finally:
                    index.give_up_build(build_generation)
            if not isinstance(exc, Exception | BuildAborted):
                raise

    def _catch_up(self, index: _CollectionIndex, build_generation: int, built: BuiltIndex) -> np.ndarray:
        """Copy what the delta gathered during the build into the new index outside the collection lock, in
        rounds, until little is left (finish_build moves that rest under the lock). Returns the ids copied."""
        merged = np.zeros(0, dtype=np.int64)
        while not self._closing.is_set():
            with index.lock:
                if build_generation != index.generation:
                    break
                ids, vectors = index.delta_to_merge(merged)
            if len(ids) <= self.CATCH_UP_UNDER_LOCK:
                break
            index.merge_into(built.index, built, ids, vectors)
            merged = np.union1d(merged, ids)
        return merged

    def _read(self, collection: str) -> AbstractContextManager[SourceView]:
        assert self.source is not None
        return self.source.read_collection(collection)

    def wait_for_builds(self, timeout_s: float | None = None) -> None:
        """Block until every build started so far has finished (tests, benchmarks, shutdown)."""
        for future in list(self._builds.values()):
            future.result(timeout=timeout_s)

    def release_all(self) -> None:
        """Free every serving index (GPU ones under the owner's lock); the registry is empty afterwards."""
        with self._lock:
            indexes, self._collections = list(self._collections.values()), {}
        for index in indexes:
            with index.lock:
                index.generation += 1
                index.release()
                index.count = 0

    def close(self) -> None:
        """Stop the builder: a running build gives up at its next chunk; the serving indexes stay usable."""
        self._closing.set()
        self._builder.shutdown(wait=True, cancel_futures=True)


def iter_chunks(ids: np.ndarray, vectors: np.ndarray, chunk: int = 16384) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Split (n,) ids and (n, D) vectors into chunks of ``chunk`` rows."""
    for start in range(0, len(ids), chunk):
        yield ids[start : start + chunk], vectors[start : start + chunk]

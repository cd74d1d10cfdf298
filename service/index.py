"""Vector index per collection, behind a small interface so another backend (e.g. Milvus) can replace FAISS.

Embeddings are L2-normalised, so inner product = cosine similarity. A collection starts as an exact
IndexIDMap2(IndexFlatIP); past ``hnsw_min_size`` vectors it is rebuilt as IndexHNSWFlat (inner product).
FAISS is not safe for concurrent add + search on one index, so every collection has its own lock; callers run
these methods in a thread pool, never on the event loop.

    registry = FaissIndexRegistry(dim=512)
    registry.add("match-1", ids=np.array([1, 2]), vectors=emb)   # emb (2, 512) float32, unit rows
    hits = registry.search("match-1", queries, k=10)              # list (one per query) of [(id, score)]
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Protocol

import faiss
import numpy as np

logger = logging.getLogger(__name__)

Hit = tuple[int, float]


class VectorIndex(Protocol):
    """What the routes need from a vector store: per-collection add / remove / search / size."""

    def add(self, collection: str, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    def remove(self, collection: str, ids: np.ndarray) -> int: ...

    def search(self, collection: str, queries: np.ndarray, k: int) -> list[list[Hit]]: ...

    def size(self, collection: str) -> int: ...

    def drop(self, collection: str) -> None: ...

    def collections(self) -> list[str]: ...


@dataclass(frozen=True)
class IndexConfig:
    """When to leave exact search, and the HNSW knobs used after that."""

    hnsw_min_size: int = 50_000
    hnsw_m: int = 16
    hnsw_ef_construction: int = 100
    hnsw_ef_search: int = 128
    use_gpu: bool = False


def gpu_faiss_available() -> bool:
    """True when this faiss build has GPU support and a GPU is visible to it."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class _CollectionIndex:
    """One collection: a FAISS index plus a copy of its vectors (HNSW cannot delete: rebuilds need them)."""

    def __init__(self, dim: int, config: IndexConfig, gpu_resources: object | None) -> None:
        self.dim = dim
        self.config = config
        self.lock = threading.Lock()
        self._gpu_resources: Any = gpu_resources
        self._vectors: dict[int, np.ndarray] = {}
        self._tombstones: set[int] = set()
        self.kind = "flat"
        self._index: Any = self._build_flat()

    def _build_flat(self) -> Any:
        # Any: the faiss stubs miss the SWIG wrappers' numpy conveniences (remove_ids(array), downcasts).
        index: Any = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        if self._gpu_resources is not None:
            # Guarded: only reached with a GPU faiss build; not exercised by the CPU test suite.
            index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, index)
        return index

    def _build_hnsw(self) -> Any:
        hnsw = faiss.IndexHNSWFlat(self.dim, self.config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = self.config.hnsw_ef_construction
        hnsw.hnsw.efSearch = self.config.hnsw_ef_search
        return faiss.IndexIDMap2(hnsw)

    @property
    def size(self) -> int:
        return len(self._vectors)

    def _rebuild(self) -> None:
        """Rebuild from the kept vectors, picking flat or HNSW by size (back to flat below half)."""
        size = len(self._vectors)
        want_hnsw = size >= self.config.hnsw_min_size or (
            self.kind == "hnsw" and size >= self.config.hnsw_min_size // 2
        )
        index = self._build_hnsw() if want_hnsw else self._build_flat()
        if size:
            ids = np.fromiter(self._vectors.keys(), dtype=np.int64, count=size)
            index.add_with_ids(np.stack(list(self._vectors.values())), ids)
        previous, self.kind = self.kind, "hnsw" if want_hnsw else "flat"
        self._index = index
        self._tombstones.clear()
        if previous != self.kind:
            logger.info("collection index switched %s -> %s at %d vectors", previous, self.kind, size)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        for i, vec in zip(ids.tolist(), vectors, strict=True):
            if i in self._vectors:
                raise ValueError(f"id {i} is already in the index")
            self._vectors[i] = vec
        if self.kind == "flat" and len(self._vectors) >= self.config.hnsw_min_size:
            self._rebuild()
        else:
            self._index.add_with_ids(vectors, ids)

    def remove(self, ids: np.ndarray) -> int:
        present = [i for i in ids.tolist() if i in self._vectors]
        for i in present:
            del self._vectors[i]
        if not present:
            return 0
        if self.kind == "flat" and self._gpu_resources is None:
            self._index.remove_ids(np.asarray(present, dtype=np.int64))
        elif self.kind == "flat":
            # GPU flat indexes have no remove_ids; deletes are rare, so a rebuild is acceptable.
            self._rebuild()
        else:
            # HNSW graphs cannot drop nodes: hide them at search time and rebuild once they pile up.
            self._tombstones.update(present)
            if len(self._tombstones) > max(64, len(self._vectors) // 10):
                self._rebuild()
        return len(present)

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        if not self._vectors:
            return [[] for _ in range(queries.shape[0])]
        fetch = min(k + len(self._tombstones), self._index.ntotal)
        if self.kind == "hnsw":
            hnsw: Any = faiss.downcast_index(self._index.index)
            hnsw.hnsw.efSearch = max(self.config.hnsw_ef_search, fetch)
        scores, ids = self._index.search(queries, fetch)
        results: list[list[Hit]] = []
        for row_ids, row_scores in zip(ids, scores, strict=True):
            hits = [
                (int(i), float(s))
                for i, s in zip(row_ids, row_scores, strict=True)
                if i >= 0 and int(i) not in self._tombstones
            ]
            results.append(hits[:k])
        return results


class FaissIndexRegistry:
    """FAISS implementation of VectorIndex: one _CollectionIndex per collection, each with its own lock."""

    def __init__(self, dim: int, config: IndexConfig | None = None) -> None:
        self.dim = dim
        self.config = config or IndexConfig()
        self._lock = threading.Lock()
        self._collections: dict[str, _CollectionIndex] = {}
        self._gpu_resources: Any = None
        if self.config.use_gpu and gpu_faiss_available():
            self._gpu_resources = faiss.StandardGpuResources()
            logger.info("FAISS flat indexes will live on the GPU")

    def _get(self, collection: str, create: bool = False) -> _CollectionIndex | None:
        with self._lock:
            index = self._collections.get(collection)
            if index is None and create:
                index = _CollectionIndex(self.dim, self.config, self._gpu_resources)
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

    def remove(self, collection: str, ids: np.ndarray) -> int:
        """Remove ids (unknown ones are ignored); returns how many were removed."""
        index = self._get(collection)
        if index is None:
            return 0
        with index.lock:
            return index.remove(np.asarray(ids, dtype=np.int64).reshape(-1))

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
        return 0 if index is None else index.size

    def kind(self, collection: str) -> str | None:
        """'flat' or 'hnsw' (None for an unknown collection); for /info and tests."""
        index = self._get(collection)
        return None if index is None else index.kind

    def drop(self, collection: str) -> None:
        with self._lock:
            self._collections.pop(collection, None)

    def collections(self) -> list[str]:
        with self._lock:
            return sorted(self._collections)

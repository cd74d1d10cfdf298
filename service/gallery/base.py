"""The gallery interface: what the routes need from wherever gallery items live.

A gallery holds named collections of items (a label, JSON metadata, the SHA-256 of the crop bytes and a unit
embedding of dimension D). Every method blocks; routes call them in a worker thread, never on the event loop.
Backends: ``local`` (SQLite + in-process FAISS, service/gallery/local/backend.py) and ``milvus``.

    gallery.add("match-1", [NewItem("home-7", {}, sha, emb)])     # emb (D,) float32, unit norm; all or nothing
    hits = gallery.search("match-1", queries, k=10)              # queries (Q, D) -> Q lists of ScoredItem, best first
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from service.core.errors import NotFoundError, ServiceError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NewItem:
    """A crop to register: label, metadata, SHA-256 of its file bytes, and its (D,) float32 unit embedding.

    ``crop`` is the uploaded file itself (kept when REID_STORE_CROPS is on, for GET /gallery/{id}/image and
    re-embedding with another model by reid-reindex); None keeps no image.
    """

    label: str
    metadata: dict[str, Any]
    sha256: str
    embedding: np.ndarray
    crop: bytes | None = None


@dataclass(frozen=True)
class GalleryItem:
    """A stored gallery item, without its embedding."""

    id: str
    collection: str
    label: str
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    sha256: str = ""


@dataclass(frozen=True)
class ScoredItem:
    """One search hit: the item and its cosine similarity to the query."""

    item: GalleryItem
    score: float


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    size: int
    created_at: str


@dataclass(frozen=True)
class GalleryHealth:
    """What /readyz and /info report about the gallery backend."""

    backend: str
    ok: bool
    detail: str = ""


class GalleryObserver(Protocol):
    """Told about collection sizes (the Prometheus gauges in service/core/metrics.py)."""

    def set_gallery_size(self, collection: str, size: int) -> None: ...

    def forget_collection(self, collection: str) -> None: ...


class NoObserver:
    """A GalleryObserver that ignores everything (galleries opened outside the service: tools, benchmarks)."""

    def set_gallery_size(self, collection: str, size: int) -> None:
        pass

    def forget_collection(self, collection: str) -> None:
        pass


class CollectionNotFoundError(NotFoundError):
    def __init__(self, name: str) -> None:
        super().__init__("collection_not_found", f"collection {name!r} does not exist")


class DuplicateCropError(ServiceError):
    """Crops whose bytes are already registered in the collection (or repeated within the request): 409.

    ``duplicates`` pairs the file's position in the request with the id of the item already holding those bytes
    (None when the repeat is within the request itself).
    """

    def __init__(self, collection: str, duplicates: Sequence[tuple[int, str | None]]) -> None:
        parts = [
            f"file #{index} is already item {item_id}" if item_id else f"file #{index} repeats an earlier file"
            for index, item_id in duplicates
        ]
        super().__init__(
            409,
            "duplicate_crop",
            f"in collection {collection!r}: " + "; ".join(parts) + "; nothing was registered",
            extra={"duplicates": [{"file": index, "id": item_id} for index, item_id in duplicates]},
        )
        self.duplicates = list(duplicates)


class UnknownCursorError(ServiceError):
    """A listing cursor that cannot be placed (not an item id of this gallery, and not time-ordered): 400."""

    def __init__(self, cursor: str) -> None:
        super().__init__(
            400,
            "unknown_cursor",
            f"after={cursor}: no such item, and the id carries no registration time to place it by "
            "(ids from before time-ordered ids were used); continue from another item's id or page by offset",
        )


class BackendUnavailableError(ServiceError):
    """The vector database cannot be reached: 503, retried by the client, never a hang."""

    def __init__(self, detail: str, retry_after_s: int = 2) -> None:
        super().__init__(503, "backend_unavailable", detail, {"Retry-After": str(retry_after_s)})


class Gallery(Protocol):
    """Collections of labelled crops with their embeddings; every write is durable before it returns."""

    backend: str
    embedding_dim: int

    def add(self, collection: str, items: Sequence[NewItem]) -> list[GalleryItem]:
        """Register all items in one durable step (creating the collection), or none of them.

        Raises DuplicateCropError when a crop's sha256 is already in the collection or repeats in ``items``.
        """
        ...

    def search(self, collection: str, queries: np.ndarray, k: int) -> list[list[ScoredItem]]:
        """(Q, D) unit queries -> per query up to k hits, best first. Unknown collection: CollectionNotFoundError."""
        ...

    def has_collection(self, name: str) -> bool: ...

    def get(self, item_id: str) -> GalleryItem | None: ...

    def get_image(self, item_id: str) -> bytes | None:
        """The crop file registered for the item as uploaded, or None (unknown id or no crop kept)."""
        ...

    def list_items(
        self, collection: str | None, offset: int, limit: int, after: str | None = None
    ) -> tuple[int, list[GalleryItem]]:
        """(total, one page in registration order), optionally within one collection (which must exist).

        With ``after`` (an item id: the last one of the previous page) the page starts right after that item
        instead of at ``offset``, even when that item has been deleted since: items that live throughout a
        listing are neither skipped nor repeated, whatever is deleted meanwhile.
        """
        ...

    def delete(self, item_id: str) -> GalleryItem | None:
        """Delete one item durably; returns it, or None when the id is unknown."""
        ...

    def collections(self) -> list[CollectionInfo]:
        """All collections with their sizes, sorted by name."""
        ...

    def drop_collection(self, name: str) -> int | None:
        """Delete a collection and its items durably; returns how many items went, None when unknown."""
        ...

    def size(self, collection: str) -> int: ...

    def health(self) -> GalleryHealth:
        """Cheap reachability check; ``ok=False`` when the backend cannot serve."""
        ...

    def close(self) -> None: ...


def find_repeats(items: Sequence[NewItem]) -> list[tuple[int, str | None]]:
    """Positions of items whose sha256 already appeared earlier in the same request."""
    seen: set[str] = set()
    repeats: list[tuple[int, str | None]] = []
    for i, item in enumerate(items):
        if item.sha256 in seen:
            repeats.append((i, None))
        seen.add(item.sha256)
    return repeats

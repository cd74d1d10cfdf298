"""Backend ``milvus``: every gallery item lives in Milvus, so service replicas keep no gallery state.

One Milvus collection ``<prefix>_items`` holds the items of every gallery, with the gallery name as its partition
key; a small ``<prefix>_catalog`` collection holds the galleries (name, creation time) and the model that built
the embeddings (fingerprint, dimension). Why one collection and not one per gallery: item ids arrive without their
gallery (GET/DELETE /gallery/{id}), creating a Milvus collection costs a schema, an index and a load (0.5 s on
Milvus Lite, more on a cluster) while a partition-key value costs nothing, and Milvus caps the number of
collections (README "More than one machine" has the measurements).

Guarantees (README "More than one machine"):
- every read and search runs with Strong consistency, so a 2xx registration is seen by any replica's next query;
- a 201 comes after Milvus acknowledged the insert (Milvus: written to its WAL / message queue; Milvus Lite: in
  its write-ahead log, flushed to the OS, so it survives kill -9 of either process);
- same crop bytes twice in a gallery: 409. Within a replica a lock serialises check and insert; across replicas
  each add re-reads after inserting and withdraws its items when another item with the same bytes is visible,
  so at most one of two racing registrations survives (both may be refused; never both kept).

Item ids are UUIDv7 (time-ordered), which gives the registration order for listing without a counter.

    gallery = MilvusGallery.open(MilvusConfig(uri="data/milvus.db"), embedding_dim=512, fingerprint=sha)
    gallery.add("match-1", items)
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
import numpy as np
from pymilvus import DataType, MilvusClient
from pymilvus.exceptions import MilvusException

from service.core.errors import ServiceError
from service.gallery.base import (
    BackendUnavailableError,
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
from service.gallery.milvus.filters import literal, literal_list

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Field sizes. Milvus counts VARCHAR lengths in UTF-8 bytes: 128 characters (routes.MAX_LABEL_LENGTH) take at
# most 512. Metadata JSON is capped below Milvus' 64 KiB JSON limit (routes.MAX_METADATA_BYTES applies to both
# backends, so bad input behaves the same).
LABEL_BYTES = 512
NAME_BYTES = 256
MAX_METADATA_BYTES = 16 * 1024
# Rows per insert / ids per ``in`` list: far below Milvus' gRPC message (64 MiB) and expression limits.
CHUNK = 256
INDEX_TYPES = ("FLAT", "HNSW", "AUTOINDEX")

_ITEM_FIELDS = ["id", "gallery", "label", "metadata", "created_at", "sha256"]
_MODEL_KEY = "model"


class ModelMismatchError(RuntimeError):
    """Milvus holds galleries built by another model: this replica refuses to start."""


@dataclass(frozen=True)
class MilvusConfig:
    """Where Milvus is and how to talk to it.

    ``uri``: a local ``*.db`` path (Milvus Lite, embedded in this process) or ``http://host:19530``.
    ``timeout_s`` bounds every call; ``connect_timeout_s`` bounds the wait for Milvus at start-up.
    """

    uri: str
    token: str | None = None
    prefix: str = "reid"
    index_type: str = "FLAT"
    hnsw_m: int = 16
    hnsw_ef_construction: int = 100
    hnsw_ef_search: int = 128
    timeout_s: float = 5.0
    connect_timeout_s: float = 60.0

    @property
    def embedded(self) -> bool:
        return "://" not in self.uri


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class _Uuid7:
    """UUIDv7 strings (RFC 9562): 48-bit Unix ms, then a 12-bit counter so ids from one process stay ordered."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = 0
        self._counter = 0

    def __call__(self) -> str:
        with self._lock:
            ms = time.time_ns() // 1_000_000
            if ms <= self._last_ms:
                ms = self._last_ms
                self._counter += 1
                if self._counter > 0xFFF:  # 4096 ids in one ms: borrow the next ms
                    ms += 1
                    self._counter = 0
            else:
                self._counter = 0
            self._last_ms = ms
            counter = self._counter
        value = (ms & ((1 << 48) - 1)) << 80
        value |= 0x7 << 76 | counter << 64
        value |= 0b10 << 62 | secrets.randbits(62)
        h = f"{value:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


new_id = _Uuid7()


def _is_unavailable(exc: BaseException) -> bool:
    """Whether an error means 'Milvus cannot be reached now' (retryable) rather than a bad request."""
    if isinstance(exc, grpc.RpcError):
        return True
    if isinstance(exc, MilvusException):
        text = str(exc).lower()
        return exc.code in (1, 2) or any(
            word in text for word in ("unavailable", "deadline", "connect", "timeout", "closed", "not ready")
        )
    return isinstance(exc, (ConnectionError, TimeoutError))


def _is_released(exc: MilvusException) -> bool:
    text = str(exc).lower()
    return exc.code == 101 or "released" in text or "not loaded" in text


def _chunks(values: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _item(row: dict[str, Any]) -> GalleryItem:
    metadata = row.get("metadata") or {}
    if isinstance(metadata, str):  # some server versions return JSON fields as text
        metadata = json.loads(metadata)
    return GalleryItem(
        id=str(row["id"]),
        collection=str(row["gallery"]),
        label=str(row["label"]),
        metadata=dict(metadata),
        created_at=str(row["created_at"]),
        sha256=str(row["sha256"]),
    )


class MilvusGallery:
    """Galleries in Milvus; safe for concurrent use by the route threads and by several replicas."""

    backend = "milvus"

    def __init__(
        self, client: MilvusClient, config: MilvusConfig, embedding_dim: int, observer: GalleryObserver | None
    ) -> None:
        self._client = client
        self.config = config
        self.embedding_dim = int(embedding_dim)
        self.items_name = f"{config.prefix}_items"
        self.catalog_name = f"{config.prefix}_catalog"
        self._observer: GalleryObserver = observer or NoObserver()
        self._write_lock = threading.Lock()

    # ------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        config: MilvusConfig,
        embedding_dim: int,
        fingerprint: str = "",
        observer: GalleryObserver | None = None,
    ) -> MilvusGallery:
        """Connect (waiting up to connect_timeout_s), create the two collections if missing, check the model.

        Raises ModelMismatchError when Milvus holds items embedded by another model or dimension.
        """
        if config.index_type not in INDEX_TYPES:
            raise ValueError(f"unknown Milvus index type {config.index_type!r}; valid: {', '.join(INDEX_TYPES)}")
        if config.embedded and not config.uri.endswith(".db"):
            raise ValueError(f"REID_MILVUS_URI={config.uri!r}: a Milvus Lite file must end in .db (or use http://)")
        if config.embedded:
            os.makedirs(os.path.dirname(os.path.abspath(config.uri)), exist_ok=True)
        # pymilvus logs every failed RPC with a traceback (several per call while Milvus is down); _call reports
        # each failure once, as the 503 it becomes.
        logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
        client = cls._connect(config)
        gallery = cls(client, config, embedding_dim, observer)
        try:
            gallery._ensure_schema()
            gallery._check_model(fingerprint)
        except BaseException:
            gallery.close()
            raise
        logger.info(
            "milvus gallery at %s (%s, index %s): %d collections",
            config.uri if config.embedded else config.uri.split("@")[-1],
            gallery.items_name,
            config.index_type,
            len(gallery._catalog_collections()),
        )
        return gallery

    @staticmethod
    def _connect(config: MilvusConfig) -> MilvusClient:
        deadline = time.monotonic() + config.connect_timeout_s
        delay = 0.2
        while True:
            try:
                return MilvusClient(uri=config.uri, token=config.token or "", timeout=config.timeout_s)
            except Exception as exc:
                if not _is_unavailable(exc) or time.monotonic() + delay > deadline:
                    raise RuntimeError(
                        f"cannot reach Milvus at {config.uri} within {config.connect_timeout_s:.0f} s: {exc}"
                    ) from exc
                logger.info("waiting for Milvus at %s: %s", config.uri, exc)
                time.sleep(delay)  # start-up back-off, not test ordering
                delay = min(delay * 2, 2.0)

    def _ensure_schema(self) -> None:
        timeout = self.config.timeout_s
        existing = set(self._client.list_collections(timeout=timeout))
        if self.items_name not in existing:
            self._create(self.items_name, self._items_schema(), self._items_index())
        if self.catalog_name not in existing:
            self._create(self.catalog_name, self._catalog_schema(), self._catalog_index())
        for name in (self.items_name, self.catalog_name):
            self._client.load_collection(name, timeout=max(timeout, 30.0))
        dim = self._stored_dim()
        if dim is not None and dim != self.embedding_dim:
            raise ModelMismatchError(
                f"Milvus collection {self.items_name!r} at {self.config.uri} stores {dim}-dimensional embeddings, "
                f"but this model produces {self.embedding_dim}: use another REID_MILVUS_COLLECTION_PREFIX "
                "or the checkpoint that built it"
            )

    def _create(self, name: str, schema: Any, index: Any) -> None:
        try:
            self._client.create_collection(
                name, schema=schema, index_params=index, consistency_level="Strong", timeout=30.0
            )
            logger.info("created Milvus collection %s", name)
        except MilvusException as exc:
            # Two replicas starting together both try; the loser finds it made.
            if not self._client.has_collection(name, timeout=self.config.timeout_s):
                raise
            logger.info("Milvus collection %s was created concurrently: %s", name, exc)

    def _items_schema(self) -> Any:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=36)
        schema.add_field("gallery", DataType.VARCHAR, max_length=NAME_BYTES, is_partition_key=True)
        schema.add_field("label", DataType.VARCHAR, max_length=LABEL_BYTES)
        schema.add_field("sha256", DataType.VARCHAR, max_length=64)
        schema.add_field("created_at", DataType.VARCHAR, max_length=40)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=self.embedding_dim)
        return schema

    def _items_index(self) -> Any:
        params = self._client.prepare_index_params()
        extra: dict[str, Any] = {}
        if self.config.index_type == "HNSW":
            extra = {"M": self.config.hnsw_m, "efConstruction": self.config.hnsw_ef_construction}
        params.add_index("embedding", index_type=self.config.index_type, metric_type="IP", params=extra)
        return params

    def _catalog_schema(self) -> Any:
        # Milvus requires a vector field in every collection; the catalog's is a constant placeholder.
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=NAME_BYTES + 16)
        schema.add_field("kind", DataType.VARCHAR, max_length=16)
        schema.add_field("name", DataType.VARCHAR, max_length=NAME_BYTES)
        schema.add_field("created_at", DataType.VARCHAR, max_length=40)
        schema.add_field("value", DataType.JSON)
        schema.add_field("placeholder", DataType.FLOAT_VECTOR, dim=2)
        return schema

    def _catalog_index(self) -> Any:
        params = self._client.prepare_index_params()
        params.add_index("placeholder", index_type="FLAT", metric_type="IP")
        return params

    def _stored_dim(self) -> int | None:
        described = self._client.describe_collection(self.items_name, timeout=self.config.timeout_s)
        for f in described.get("fields", []):
            if f.get("name") == "embedding":
                dim = f.get("params", {}).get("dim")
                return None if dim is None else int(dim)
        return None

    def _check_model(self, fingerprint: str) -> None:
        rows = self._catalog_get(_MODEL_KEY)
        stored = rows[0]["value"] if rows else None
        count = self._count("")
        if stored and count and fingerprint and stored.get("fingerprint") not in ("", fingerprint):
            raise ModelMismatchError(
                f"Milvus at {self.config.uri} (collection {self.items_name!r}) holds {count} embeddings made by "
                f"model {stored['fingerprint'][:16]}..., but this replica serves model {fingerprint[:16]}...: "
                "serve the same checkpoint, re-embed the galleries for the new one, or point "
                "REID_MILVUS_COLLECTION_PREFIX at another set of collections"
            )
        if stored != {"fingerprint": fingerprint, "embedding_dim": self.embedding_dim}:
            self._client.upsert(
                self.catalog_name,
                [
                    self._catalog_row(
                        _MODEL_KEY, "model", "", {"fingerprint": fingerprint, "embedding_dim": self.embedding_dim}
                    )
                ],
                timeout=self.config.timeout_s,
            )

    @staticmethod
    def _catalog_row(key: str, kind: str, name: str, value: dict[str, Any]) -> dict[str, Any]:
        return {"key": key, "kind": kind, "name": name, "created_at": _now(), "value": value, "placeholder": [1.0, 0.0]}

    # ------------------------------------------------------------ plumbing

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one Milvus call; 'cannot reach Milvus' becomes BackendUnavailableError (503), anything else rises."""
        try:
            try:
                return fn()
            except MilvusException as exc:
                if not _is_released(exc):
                    raise
                # A restarted Milvus Lite comes back with its collections released: load them, try once more.
                logger.warning("Milvus collections were released (%s); loading them again", _short(exc))
                for name in (self.items_name, self.catalog_name):
                    self._client.load_collection(name, timeout=max(self.config.timeout_s, 30.0))
                return fn()
        except ServiceError:
            raise
        except Exception as exc:
            if _is_unavailable(exc):
                raise BackendUnavailableError(f"Milvus did not answer {what}: {_short(exc)}") from exc
            raise

    def _query(self, collection: str, expr: str, fields: list[str], **kwargs: Any) -> list[dict[str, Any]]:
        return self._call(
            "a query",
            lambda: list(
                self._client.query(
                    collection, filter=expr, output_fields=fields, timeout=self.config.timeout_s, **kwargs
                )
            ),
        )

    def _scan_ids(self, expr: str) -> list[str]:
        iterator = self._client.query_iterator(
            self.items_name, batch_size=4096, filter=expr, output_fields=["id"], timeout=self.config.timeout_s
        )
        ids: list[str] = []
        try:
            while batch := iterator.next():
                ids.extend(str(r["id"]) for r in batch)
        finally:
            iterator.close()
        return ids

    def _count(self, expr: str) -> int:
        rows = self._query(self.items_name, expr, ["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    @staticmethod
    def _gallery_expr(collection: str) -> str:
        return f"gallery == {literal(collection)}"

    def _catalog_key(self, collection: str) -> str:
        return f"collection/{collection}"

    def _catalog_get(self, key: str) -> list[dict[str, Any]]:
        # Not MilvusClient.get(ids=...): pymilvus pastes string ids into its filter unescaped.
        return self._query(self.catalog_name, f"key == {literal(key)}", ["key", "name", "created_at", "value"])

    def _catalog_collections(self) -> list[dict[str, Any]]:
        return self._query(self.catalog_name, 'kind == "collection"', ["name", "created_at"])

    def _find_sha(self, collection: str, hashes: Sequence[str]) -> dict[str, list[str]]:
        """sha256 -> ids of the items holding those bytes in the collection (ids sorted, oldest first)."""
        found: dict[str, list[str]] = {}
        for part in _chunks(list(dict.fromkeys(hashes))):
            expr = f"{self._gallery_expr(collection)} and sha256 in {literal_list(part)}"
            for row in self._query(self.items_name, expr, ["id", "sha256"]):
                found.setdefault(str(row["sha256"]), []).append(str(row["id"]))
        return {sha: sorted(ids) for sha, ids in found.items()}

    def _delete_ids(self, ids: Sequence[str]) -> None:
        for part in _chunks(list(ids)):
            self._call(
                "a delete",
                functools.partial(
                    self._client.delete,
                    self.items_name,
                    filter=f"id in {literal_list(part)}",
                    timeout=self.config.timeout_s,
                ),
            )

    # ------------------------------------------------------------ writes

    def add(self, collection: str, items: Sequence[NewItem]) -> list[GalleryItem]:
        repeats = find_repeats(items)
        if repeats:
            raise DuplicateCropError(collection, repeats)
        for i, item in enumerate(items):
            if item.embedding.shape != (self.embedding_dim,):
                raise ValueError(
                    f"item #{i} embedding has shape {item.embedding.shape}, expected ({self.embedding_dim},)"
                )
        hashes = [item.sha256 for item in items]
        with self._write_lock:
            existing = self._find_sha(collection, hashes)
            if existing:
                raise DuplicateCropError(
                    collection, [(i, existing[h][0]) for i, h in enumerate(hashes) if h in existing]
                )
            self._ensure_collection(collection)
            created_at = _now()
            rows = [
                {
                    "id": new_id(),
                    "gallery": collection,
                    "label": item.label,
                    "sha256": item.sha256,
                    "created_at": created_at,
                    "metadata": item.metadata,
                    "embedding": np.asarray(item.embedding, dtype=np.float32).tolist(),
                }
                for item in items
            ]
            inserted: list[str] = []
            try:
                for part in _chunks(rows):
                    self._call(
                        "an insert",
                        functools.partial(
                            self._client.insert, self.items_name, list(part), timeout=self.config.timeout_s
                        ),
                    )
                    inserted.extend(r["id"] for r in part)
            except BaseException:
                # All or nothing: withdraw the chunks already in (best effort when Milvus just went away).
                if inserted:
                    logger.warning("insert failed after %d of %d rows; withdrawing them", len(inserted), len(rows))
                    try:
                        self._delete_ids(inserted)
                    except Exception:
                        logger.exception("could not withdraw %d rows of a failed registration", len(inserted))
                raise
            self._withdraw_if_raced(collection, hashes, {r["id"] for r in rows})
            self.size(collection)  # refreshes the size gauge
        return [_item(r) for r in rows]

    def _withdraw_if_raced(self, collection: str, hashes: Sequence[str], mine: set[str]) -> None:
        """Another replica registered the same bytes between our check and our insert: back off (409)."""
        after = self._find_sha(collection, hashes)
        clashes = [
            (i, next(x for x in after[h] if x not in mine))
            for i, h in enumerate(hashes)
            if any(x not in mine for x in after.get(h, []))
        ]
        if clashes:
            logger.warning("%d crops were registered concurrently by another replica; withdrawing ours", len(clashes))
            self._delete_ids(sorted(mine))
            raise DuplicateCropError(collection, clashes)

    def _ensure_collection(self, collection: str) -> None:
        key = self._catalog_key(collection)
        if not self._catalog_get(key):
            row = self._catalog_row(key, "collection", collection, {})
            self._call(
                "a catalog write",
                lambda: self._client.upsert(self.catalog_name, [row], timeout=self.config.timeout_s),
            )

    def delete(self, item_id: str) -> GalleryItem | None:
        with self._write_lock:
            item = self.get(item_id)
            if item is None:
                return None
            self._delete_ids([item.id])
            self.size(item.collection)
        return item

    def drop_collection(self, name: str) -> int | None:
        with self._write_lock:
            if not self.has_collection(name):
                return None
            count = self._count(self._gallery_expr(name))
            # Items first, then the catalog entry: a crash in between leaves a visible, smaller collection
            # (drop again), never items that a re-created collection of the same name would inherit.
            self._call(
                "a delete",
                lambda: self._client.delete(
                    self.items_name, filter=self._gallery_expr(name), timeout=max(self.config.timeout_s, 30.0)
                ),
            )
            key = self._catalog_key(name)
            self._call(
                "a catalog delete",
                lambda: self._client.delete(
                    self.catalog_name, filter=f"key == {literal(key)}", timeout=self.config.timeout_s
                ),
            )
            self._observer.forget_collection(name)
        return count

    # ------------------------------------------------------------ reads

    def search(self, collection: str, queries: np.ndarray, k: int) -> list[list[ScoredItem]]:
        if not self.has_collection(collection):
            raise CollectionNotFoundError(collection)
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.embedding_dim)
        params: dict[str, Any] = {"metric_type": "IP"}
        if self.config.index_type == "HNSW":
            params["params"] = {"ef": max(self.config.hnsw_ef_search, k)}
        out: list[list[ScoredItem]] = []
        for start in range(0, len(queries), 64):
            part = queries[start : start + 64]
            hits = self._call(
                "a search",
                functools.partial(
                    self._client.search,
                    self.items_name,
                    data=[q.tolist() for q in part],
                    filter=self._gallery_expr(collection),
                    limit=k,
                    output_fields=_ITEM_FIELDS,
                    search_params=params,
                    timeout=self.config.timeout_s,
                ),
            )
            for per in hits:
                out.append([ScoredItem(_item({**h["entity"], "id": h["id"]}), float(h["distance"])) for h in per])
        return out

    def has_collection(self, name: str) -> bool:
        return bool(self._catalog_get(self._catalog_key(name)))

    def get(self, item_id: str) -> GalleryItem | None:
        rows = self._query(self.items_name, f"id == {literal(item_id)}", _ITEM_FIELDS)
        return _item(rows[0]) if rows else None

    def get_image(self, item_id: str) -> bytes | None:
        """Crops are not kept in Milvus (a VARCHAR holds at most 64 KiB and crops may reach REID_MAX_FILE_BYTES;
        a blob store beside Milvus would be the place): GET /gallery/{id}/image answers 404 image_not_stored."""
        return None

    def list_items(
        self, collection: str | None, offset: int, limit: int, after: str | None = None
    ) -> tuple[int, list[GalleryItem]]:
        """Registration order is id order (UUIDv7). Milvus returns query rows in no fixed order and caps
        offset + limit (16,384), so the ids are read with a query iterator (36 bytes each), sorted here, and
        only the page's rows fetched. With ``after`` only the ids above it are scanned: a cursor needs no lookup
        of its item, so a deleted one places the page just as well."""
        if collection is not None and not self.has_collection(collection):
            raise CollectionNotFoundError(collection)
        expr = self._gallery_expr(collection) if collection is not None else 'id != ""'
        if after is not None:
            scan = functools.partial(self._scan_ids, f"({expr}) and id > {literal(after)}")
            page_ids = sorted(self._call("an id scan", scan))[:limit]
            total = self._count(expr)
        else:
            ids = sorted(self._call("an id scan", functools.partial(self._scan_ids, expr)))
            page_ids = ids[offset : offset + limit]
            total = len(ids)
        rows: dict[str, GalleryItem] = {}
        for part in _chunks(page_ids):
            for r in self._query(self.items_name, f"id in {literal_list(part)}", _ITEM_FIELDS):
                rows[str(r["id"])] = _item(r)
        return total, [rows[i] for i in page_ids if i in rows]

    def collections(self) -> list[CollectionInfo]:
        infos = [
            CollectionInfo(str(r["name"]), self.size(str(r["name"])), str(r["created_at"]))
            for r in self._catalog_collections()
        ]
        return sorted(infos, key=lambda c: c.name)

    def size(self, collection: str) -> int:
        # Refreshes this replica's size gauge (after its own writes and on every read of the size); writes
        # through other replicas show up here at the next refresh.
        count = self._count(self._gallery_expr(collection))
        self._observer.set_gallery_size(collection, count)
        return count

    def health(self) -> GalleryHealth:
        try:
            # A real read through the same path as the routes (reloading released collections), not a ping.
            self._catalog_get(_MODEL_KEY)
        except Exception as exc:
            return GalleryHealth(backend=self.backend, ok=False, detail=f"Milvus unreachable: {_short(exc)}")
        return GalleryHealth(backend=self.backend, ok=True)

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:
            logger.debug("closing the Milvus client failed", exc_info=True)
        if self.config.embedded:
            # The embedded server belongs to this process; stop it so a reopen reads its files again.
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self.config.uri)


def _short(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError):
        code = exc.code() if hasattr(exc, "code") else None
        return f"gRPC {getattr(code, 'name', code)}"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]

"""Backend ``milvus``: every gallery item lives in Milvus, so service replicas keep no gallery state.

One Milvus collection ``<prefix>_items`` holds the items of every gallery, with the gallery name in a field; a
small ``<prefix>_catalog`` collection holds the galleries, their drops and the model that built the embeddings.
Why one collection and not one per gallery: item ids arrive without their gallery (GET/DELETE /gallery/{id}),
creating a Milvus collection costs a schema, an index and a load (0.5 s on Milvus Lite, 3.5 s on a standalone
server here) while a field value costs nothing, and Milvus caps the number of collections.

Registration converges without locks (Milvus has no transactions and no unique constraint):
- an item's id is derived from (gallery, generation, SHA-256 of the crop bytes) and written with ``upsert``, so two
  replicas registering the same bytes at once write the same row: one stored item, every 409 names an item that
  exists, a 201 is never withdrawn. (Both racers may get 201 with the same id; the stored label and metadata are
  the last writer's.)
- a gallery's generation counts its drops. A drop writes a tombstone for the current generation first, then deletes
  the items; every read filters on the current generation, so a registration that loses the race with a drop stays
  invisible forever, even when the name is used again. Ids of a re-created gallery differ from the dropped ones.
- each model writes its own claim (``model/<fingerprint>``) and then reads all claims: a replica that sees another
  model's claim refuses to start, and of two new models starting at once at least one sees the other's claim.

Consistency (README "More than one machine"): reads of galleries, items and searches use a guarantee timestamp of
max(this replica's last write, now - ``max_staleness_ms``): a replica sees its own writes at once and every write
acknowledged by any replica more than ``max_staleness_ms`` (default 1000 ms) earlier, plus the clock offset between
replica and Milvus. With Milvus ingesting normally this waits for nothing (Milvus applies writes within one time
tick, 200 ms); 0 makes every read Strong. A drop answers only ``max_staleness_ms`` after its tombstone was written
(and drops read Strong), so a registration that starts after a drop returned never lands in the dropped generation.

Item ids are UUID-shaped (version 8). A 201 comes after Milvus acknowledged the upsert (written to its WAL / message
queue; Milvus Lite: its write-ahead log), so it survives kill -9 of either process.

    gallery = MilvusGallery.open(MilvusConfig(uri="data/milvus.db"), embedding_dim=512, fingerprint=sha)
    gallery.add("match-1", items)
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
import numpy as np
from pymilvus import DataType, MilvusClient
from pymilvus.client import ts_utils
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
    UnknownCursorError,
    find_repeats,
)
from service.gallery.milvus.filters import literal, literal_list

logger = logging.getLogger(__name__)
# Milvus caps offset + limit of one query at 16,384 rows.
_QUERY_RESULT_CAP = 16_384

T = TypeVar("T")

# Field sizes. Milvus counts VARCHAR lengths in UTF-8 bytes: 128 characters (routes.MAX_LABEL_LENGTH) take at
# most 512. Metadata JSON is capped below Milvus' 64 KiB JSON limit (routes.MAX_METADATA_BYTES applies to both
# backends, so bad input behaves the same).
LABEL_BYTES = 512
NAME_BYTES = 256
MAX_METADATA_BYTES = 16 * 1024
# Rows per upsert / ids per ``in`` list: far below Milvus' gRPC message (64 MiB) and expression limits. A request
# of the service (REID_MAX_FILES, 64 by default) is one upsert, which Milvus applies as one message.
CHUNK = 256
INDEX_TYPES = ("FLAT", "HNSW", "AUTOINDEX")
# Bumped when the collections' schema changes; collections of another version are refused with a clear message.
SCHEMA_VERSION = 2

_ITEM_FIELDS = ["id", "gallery", "generation", "seq", "label", "metadata", "created_at", "sha256"]
_CATALOG_FIELDS = ["key", "kind", "name", "generation", "created_at", "value"]
_ID_NAMESPACE = "soccernet-reid/milvus-item/v2"


class ModelMismatchError(RuntimeError):
    """Milvus holds galleries built by another model: this replica refuses to start."""


class MilvusUnreachableError(RuntimeError):
    """Milvus did not answer within the connect timeout (or start-up was cancelled while waiting)."""


@dataclass(frozen=True)
class MilvusConfig:
    """Where Milvus is and how to talk to it.

    ``uri``: a local ``*.db`` path (Milvus Lite, embedded in this process) or ``http://host:19530``.
    ``timeout_s`` bounds every call; ``connect_timeout_s`` bounds the wait for Milvus at start-up (0: one try).
    ``max_staleness_ms``: reads see every write acknowledged longer ago than this (module docstring).
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
    max_staleness_ms: int = 1000

    @property
    def embedded(self) -> bool:
        return "://" not in self.uri


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def item_id(collection: str, generation: int, sha256: str) -> str:
    """The id of the item holding bytes ``sha256`` in generation ``generation`` of ``collection``: every replica
    computes the same one, which is what makes concurrent registrations converge on one row.

    UUID-shaped (RFC 9562 version 8, custom): the first 122 bits of SHA-256 over the three values.
    """
    text = "\x00".join((_ID_NAMESPACE, collection, str(generation), sha256))
    value = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:16], "big")
    value = (value & ~(0xF << 76)) | (0x8 << 76)  # version 8
    value = (value & ~(0b11 << 62)) | (0b10 << 62)  # RFC 9562 variant
    return str(uuid.UUID(int=value))


class _Sequence:
    """Registration order for listing: microseconds since the epoch, strictly increasing within this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0

    def take(self, n: int) -> int:
        """The first of ``n`` consecutive sequence numbers."""
        with self._lock:
            first = max(time.time_ns() // 1000, self._last + 1)
            self._last = first + n - 1
            return first


_sequence = _Sequence()


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


@dataclass(frozen=True)
class _GalleryState:
    """What the catalog says about one gallery name: its current generation and whether it exists in it."""

    name: str
    generation: int
    exists: bool
    created_at: str = ""


def _states(rows: Sequence[dict[str, Any]]) -> dict[str, _GalleryState]:
    """Catalog rows (kinds ``collection`` and ``dropped``) -> the state of every name they mention.

    The current generation of a name is one past its highest tombstone; it exists when a ``collection`` row of
    that generation is there. Tombstones only accumulate, so a generation never comes back."""
    dropped: dict[str, int] = {}
    created: dict[tuple[str, int], str] = {}
    for row in rows:
        name, generation = str(row["name"]), int(row["generation"])
        if row["kind"] == "dropped":
            dropped[name] = max(dropped.get(name, -1), generation)
        elif row["kind"] == "collection":
            created[(name, generation)] = str(row["created_at"])
    names = set(dropped) | {name for name, _ in created}
    out: dict[str, _GalleryState] = {}
    for name in names:
        generation = dropped.get(name, -1) + 1
        created_at = created.get((name, generation))
        out[name] = _GalleryState(name, generation, created_at is not None, created_at or "")
    return out


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
        self._fingerprint = ""
        # Gallery states read at a guarantee of (now - max_staleness/2), reused for max_staleness/2: a cached state
        # still holds every write older than max_staleness. Own catalog writes drop the entry.
        self._state_cache: dict[str, tuple[float, _GalleryState]] = {}
        self._cache_lock = threading.Lock()
        # Milvus 2.3 acknowledges a delete without its timestamp, so read-your-deletes cannot wait for it: the
        # next read of a collection after this replica deleted from it is Strong (collection -> deletes so far).
        self._deleted: dict[str, int] = {}
        # Ids this replica registered within the last max_staleness_ms -> when to forget them (_registered_ids).
        self._recent: dict[str, float] = {}

    # ------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        config: MilvusConfig,
        embedding_dim: int,
        fingerprint: str = "",
        observer: GalleryObserver | None = None,
        stop: threading.Event | None = None,
    ) -> MilvusGallery:
        """Connect (waiting up to connect_timeout_s, or until ``stop`` is set), create the two collections if
        missing, claim them for this model.

        Raises MilvusUnreachableError when Milvus does not answer in time, ModelMismatchError when Milvus holds
        items embedded by another model or dimension.
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
        client = cls._connect(config, stop)
        gallery = cls(client, config, embedding_dim, observer)
        try:
            gallery._ensure_schema()
            gallery._claim_model(fingerprint)
        except BaseException:
            gallery.close()
            raise
        logger.info(
            "milvus gallery at %s (%s, index %s, max staleness %d ms)",
            config.uri if config.embedded else config.uri.split("@")[-1],
            gallery.items_name,
            config.index_type,
            config.max_staleness_ms,
        )
        return gallery

    @staticmethod
    def _connect(config: MilvusConfig, stop: threading.Event | None) -> MilvusClient:
        deadline = time.monotonic() + config.connect_timeout_s
        delay = 0.2
        stop = stop or threading.Event()
        while True:
            try:
                return MilvusClient(uri=config.uri, token=config.token or "", timeout=config.timeout_s)
            except Exception as exc:
                if not _is_unavailable(exc):
                    raise
                if stop.is_set() or time.monotonic() + delay > deadline:
                    raise MilvusUnreachableError(
                        f"cannot reach Milvus at {config.uri} within {config.connect_timeout_s:.0f} s: {_short(exc)}"
                    ) from exc
                logger.info("waiting for Milvus at %s: %s", config.uri, _short(exc))
                if stop.wait(delay):  # start-up back-off that a shutdown interrupts
                    raise MilvusUnreachableError(f"stopped while waiting for Milvus at {config.uri}") from exc
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
        fields = self._fields(self.items_name)
        if "generation" not in fields or "key" not in self._fields(self.catalog_name):
            raise ModelMismatchError(
                f"Milvus collection {self.items_name!r} at {self.config.uri} was created by an older version of this "
                f"service (schema before version {SCHEMA_VERSION}: no gallery generations); point "
                "REID_MILVUS_COLLECTION_PREFIX at a new name and register the crops again"
            )
        dim = fields["embedding"].get("params", {}).get("dim")
        if dim is not None and int(dim) != self.embedding_dim:
            raise ModelMismatchError(
                f"Milvus collection {self.items_name!r} at {self.config.uri} stores {dim}-dimensional embeddings, "
                f"but this model produces {self.embedding_dim}: use another REID_MILVUS_COLLECTION_PREFIX "
                "or the checkpoint that built it"
            )

    def _fields(self, collection: str) -> dict[str, dict[str, Any]]:
        described = self._client.describe_collection(collection, timeout=self.config.timeout_s)
        return {str(f.get("name")): f for f in described.get("fields", [])}

    def _create(self, name: str, schema: Any, index: Any) -> None:
        try:
            self._client.create_collection(
                name, schema=schema, index_params=index, consistency_level="Bounded", timeout=30.0
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
        # Not a partition key: Milvus 2.3 routes upserted rows by another hash than the partition key, so a
        # filter on the key then misses most of them (measured on the 2.3.5 standalone server; Lite has no
        # partitions). A filter on a plain field costs a scan of the field, no more than the search itself.
        schema.add_field("gallery", DataType.VARCHAR, max_length=NAME_BYTES)
        schema.add_field("generation", DataType.INT64)
        schema.add_field("seq", DataType.INT64)
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
        schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=NAME_BYTES + 48)
        schema.add_field("kind", DataType.VARCHAR, max_length=16)
        schema.add_field("name", DataType.VARCHAR, max_length=NAME_BYTES)
        schema.add_field("generation", DataType.INT64)
        schema.add_field("created_at", DataType.VARCHAR, max_length=40)
        schema.add_field("value", DataType.JSON)
        schema.add_field("placeholder", DataType.FLOAT_VECTOR, dim=2)
        return schema

    def _catalog_index(self) -> Any:
        params = self._client.prepare_index_params()
        params.add_index("placeholder", index_type="FLAT", metric_type="IP")
        return params

    def _claim_model(self, fingerprint: str) -> None:
        """Write this model's claim, then read every claim (Strong): another model's claim refuses the start.

        Of two replicas of different models starting together, the one reading last sees both claims (each
        reads after its own write), so at most one passes. A refused replica withdraws a claim it has just made,
        never one that was there before it came (another replica of its model may be serving on it).
        """
        self._fingerprint = fingerprint
        claim = f"model/{fingerprint}"
        before = {str(r["key"]) for r in self._catalog_query('kind == "model"', strong=True)}
        value = {"fingerprint": fingerprint, "embedding_dim": self.embedding_dim}
        self._catalog_upsert([self._catalog_row(claim, "model", "", 0, value)])
        claims = self._catalog_query('kind == "model"', strong=True)
        others = [r for r in claims if str(r["key"]) != claim]
        if not others:
            return
        if claim not in before:
            self._call("a catalog delete", lambda: self._catalog_delete(f"key == {literal(claim)}"))
        other = str((others[0].get("value") or {}).get("fingerprint", str(others[0]["key"])[6:]))
        raise ModelMismatchError(
            f"Milvus at {self.config.uri} (collections {self.items_name!r}, {self.catalog_name!r}) belongs to "
            f"model {other[:16]}..., but this replica serves model {fingerprint[:16]}...: serve the same "
            "checkpoint, or point REID_MILVUS_COLLECTION_PREFIX at another set of collections (and register the "
            "crops again with this model)"
        )

    @staticmethod
    def _catalog_row(key: str, kind: str, name: str, generation: int, value: dict[str, Any]) -> dict[str, Any]:
        return {
            "key": key,
            "kind": kind,
            "name": name,
            "generation": generation,
            "created_at": _now(),
            "value": value,
            "placeholder": [1.0, 0.0],
        }

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

    def _guarantee(
        self, collection: str, strong: bool = False, staleness_ms: float | None = None, own_writes: bool = True
    ) -> dict[str, Any]:
        """Read options: Strong, or a guarantee timestamp of max(own last write, now - staleness).

        Milvus timestamps are hybrid: physical milliseconds << 18 | a logical counter. The own-write part is the
        timestamp Milvus returned for this process's last write to ``collection`` (pymilvus keeps it)."""
        staleness = self.config.max_staleness_ms if staleness_ms is None else staleness_ms
        if strong or staleness <= 0 or collection in self._deleted:
            return {"consistency_level": "Strong"}
        bound = (time.time_ns() // 1_000_000 - int(staleness)) << 18
        if not own_writes:
            return {"consistency_level": "Customized", "guarantee_timestamp": bound}
        try:
            own = ts_utils.get_collection_ts(collection, self._client._get_connection().server_address, "") or 0
        except Exception:  # a pymilvus without the cache: the bound alone
            own = 0
        return {"consistency_level": "Customized", "guarantee_timestamp": max(int(own), bound)}

    def _deleted_from(self, collection: str) -> None:
        with self._cache_lock:
            self._deleted[collection] = self._deleted.get(collection, 0) + 1

    def _read(
        self,
        collection: str,
        what: str,
        fn: Callable[[dict[str, Any]], T],
        strong: bool = False,
        staleness_ms: float | None = None,
        own_writes: bool = True,
    ) -> T:
        """Run a read with the consistency options of ``_guarantee``; a Strong read that started after this
        replica's last delete from the collection makes the later ones see that delete too."""
        with self._cache_lock:
            deletes = self._deleted.get(collection)
        result = self._call(what, lambda: fn(self._guarantee(collection, strong, staleness_ms, own_writes)))
        if deletes is not None:
            with self._cache_lock:
                if self._deleted.get(collection) == deletes:
                    del self._deleted[collection]
        return result

    def _query(
        self, collection: str, expr: str, fields: list[str], strong: bool = False, own_writes: bool = True
    ) -> list[dict[str, Any]]:
        return self._read(
            collection,
            "a query",
            lambda options: list(
                self._client.query(
                    collection, filter=expr, output_fields=fields, timeout=self.config.timeout_s, **options
                )
            ),
            strong,
            own_writes=own_writes,
        )

    def _catalog_query(self, expr: str, strong: bool = False) -> list[dict[str, Any]]:
        return self._query(self.catalog_name, expr, _CATALOG_FIELDS, strong=strong)

    def _catalog_upsert(self, rows: list[dict[str, Any]]) -> None:
        self._call(
            "a catalog write", lambda: self._client.upsert(self.catalog_name, rows, timeout=self.config.timeout_s)
        )

    def _catalog_delete(self, expr: str) -> None:
        self._client.delete(self.catalog_name, filter=expr, timeout=self.config.timeout_s)
        self._deleted_from(self.catalog_name)

    def _count(self, expr: str) -> int:
        rows = self._query(self.items_name, expr, ["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    @staticmethod
    def _gallery_expr(state: _GalleryState) -> str:
        return f"gallery == {literal(state.name)} and generation == {state.generation}"

    def _state(self, collection: str, strong: bool = False) -> _GalleryState:
        """The gallery's current generation and existence (Strong for writes, cached briefly for reads)."""
        half = self.config.max_staleness_ms / 2
        if not strong and half > 0:
            with self._cache_lock:
                cached = self._state_cache.get(collection)
            if cached is not None and time.monotonic() - cached[0] < half / 1000:
                return cached[1]
        taken = time.monotonic()
        rows = self._read(
            self.catalog_name,
            "a catalog read",
            lambda options: list(
                self._client.query(
                    self.catalog_name,
                    filter=f'name == {literal(collection)} and kind in ["collection", "dropped"]',
                    output_fields=_CATALOG_FIELDS,
                    timeout=self.config.timeout_s,
                    **options,
                )
            ),
            strong,
            staleness_ms=half,
        )
        state = _states(rows).get(collection) or _GalleryState(collection, 0, False)
        if half > 0:
            with self._cache_lock:
                self._state_cache[collection] = (taken, state)
        return state

    def _forget_state(self, collection: str) -> None:
        with self._cache_lock:
            self._state_cache.pop(collection, None)

    def _existing(self, collection: str) -> _GalleryState:
        state = self._state(collection)
        if not state.exists:
            raise CollectionNotFoundError(collection)
        return state

    def _rows_by_id(self, ids: Sequence[str], fields: list[str], own_writes: bool = True) -> dict[str, dict[str, Any]]:
        """Point lookups by primary key (``id in [...]``), CHUNK ids per query."""
        rows: dict[str, dict[str, Any]] = {}
        for part in _chunks(list(dict.fromkeys(ids))):
            for r in self._query(self.items_name, f"id in {literal_list(part)}", fields, own_writes=own_writes):
                rows[str(r["id"])] = r
        return rows

    def _registered_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` are stored: Milvus at the staleness bound, plus this replica's own registrations of the
        last ``max_staleness_ms`` from memory. Waiting for Milvus to apply our own last write instead costs up to
        one time tick (200 ms) per registration that follows another."""
        now = time.monotonic()
        with self._cache_lock:
            self._recent = {i: t for i, t in self._recent.items() if t > now}
            mine = {i for i in ids if i in self._recent}
        return mine | set(self._rows_by_id(ids, ["id"], own_writes=False))

    def _remember(self, ids: Sequence[str]) -> None:
        until = time.monotonic() + self.config.max_staleness_ms / 1000
        with self._cache_lock:
            self._recent.update(dict.fromkeys(ids, until))

    def _forget(self, ids: Sequence[str]) -> None:
        with self._cache_lock:
            for i in ids:
                self._recent.pop(i, None)

    def _delete_ids(self, ids: Sequence[str]) -> None:
        self._forget(ids)
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
            self._deleted_from(self.items_name)

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
        # Not Strong (200 ms on a standalone server): a drop returns only once every replica's reads see its
        # tombstone (drop_collection), so a registration never lands in a generation dropped before it started.
        state = self._state(collection)
        ids = [item_id(collection, state.generation, item.sha256) for item in items]
        existing = self._registered_ids(ids) if self.config.max_staleness_ms > 0 else set(self._rows_by_id(ids, ["id"]))
        if existing:
            raise DuplicateCropError(collection, [(i, x) for i, x in enumerate(ids) if x in existing])
        if not state.exists:
            key = f"collection/{state.generation}/{collection}"
            self._catalog_upsert([self._catalog_row(key, "collection", collection, state.generation, {})])
            self._forget_state(collection)
        created_at = _now()
        first = _sequence.take(len(items))
        rows = [
            {
                "id": ids[i],
                "gallery": collection,
                "generation": state.generation,
                "seq": first + i,
                "label": item.label,
                "sha256": item.sha256,
                "created_at": created_at,
                "metadata": item.metadata,
                "embedding": np.asarray(item.embedding, dtype=np.float32).tolist(),
            }
            for i, item in enumerate(items)
        ]
        written: list[str] = []
        try:
            for part in _chunks(rows):
                self._call(
                    "an insert",
                    functools.partial(self._client.upsert, self.items_name, list(part), timeout=self.config.timeout_s),
                )
                written.extend(r["id"] for r in part)
                self._remember([r["id"] for r in part])
        except BaseException:
            # All or nothing across chunks (more than CHUNK items: never one service request): withdraw the
            # chunks already in, best effort when Milvus just went away.
            if written:
                logger.warning("upsert failed after %d of %d rows; withdrawing them", len(written), len(rows))
                try:
                    self._delete_ids(written)
                except Exception:
                    logger.exception("could not withdraw %d rows of a failed registration", len(written))
            raise
        return [_item(r) for r in rows]

    def delete(self, item_id: str) -> GalleryItem | None:
        row = self._rows_by_id([item_id], _ITEM_FIELDS).get(item_id)
        if row is None:
            return None
        state = self._state(str(row["gallery"]))
        if not state.exists or int(row["generation"]) != state.generation:
            return None  # a row of a dropped generation is not an item
        # The item's place in the listing outlives it: a cursor naming it still places the next page.
        value = {"seq": int(row["seq"])}
        self._catalog_upsert([self._catalog_row(f"deleted/{item_id}", "deleted", state.name, state.generation, value)])
        self._delete_ids([item_id])
        return _item(row)

    def drop_collection(self, name: str) -> int | None:
        state = self._state(name, strong=True)
        if not state.exists:
            return None
        count = self._count(self._gallery_expr(state))
        # The tombstone first: from it on, every replica reads the next generation, so items of this one (and
        # registrations still in flight for it) are invisible before they are deleted. A crash after it leaves
        # invisible rows that the next drop of the name deletes.
        tombstone = f"dropped/{state.generation}/{name}"
        self._catalog_upsert([self._catalog_row(tombstone, "dropped", name, state.generation, {})])
        visible_everywhere = time.monotonic() + self.config.max_staleness_ms / 1000
        self._forget_state(name)
        older = f"gallery == {literal(name)} and generation <= {state.generation}"
        self._call(
            "a delete",
            lambda: self._client.delete(self.items_name, filter=older, timeout=max(self.config.timeout_s, 30.0)),
        )
        self._deleted_from(self.items_name)
        created = f'kind in ["collection", "deleted"] and name == {literal(name)} and generation <= {state.generation}'
        self._call("a catalog delete", lambda: self._catalog_delete(created))
        self._observer.forget_collection(name)
        # Answer once any replica's next read (guarantee: now - max_staleness) sees the tombstone: a registration
        # that starts after this drop returned cannot land in the dropped generation. Drops are rare; this is
        # where the cost of bounded-staleness reads is paid.
        time.sleep(max(0.0, visible_everywhere - time.monotonic()))
        return count

    # ------------------------------------------------------------ reads

    def search(self, collection: str, queries: np.ndarray, k: int) -> list[list[ScoredItem]]:
        state = self._existing(collection)
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.embedding_dim)
        params: dict[str, Any] = {"metric_type": "IP"}
        if self.config.index_type == "HNSW":
            params["params"] = {"ef": max(self.config.hnsw_ef_search, k)}
        out: list[list[ScoredItem]] = []
        for start in range(0, len(queries), 64):
            part = queries[start : start + 64]
            data = [q.tolist() for q in part]
            hits = self._read(
                self.items_name,
                "a search",
                lambda options, data=data: self._client.search(  # type: ignore[misc]
                    self.items_name,
                    data=data,
                    filter=self._gallery_expr(state),
                    limit=k,
                    output_fields=_ITEM_FIELDS,
                    search_params=params,
                    timeout=self.config.timeout_s,
                    **options,
                ),
            )
            for per in hits:
                out.append([ScoredItem(_item({**h["entity"], "id": h["id"]}), float(h["distance"])) for h in per])
        return out

    def has_collection(self, name: str) -> bool:
        return self._state(name).exists

    def get(self, item_id: str) -> GalleryItem | None:
        row = self._rows_by_id([item_id], _ITEM_FIELDS).get(item_id)
        if row is None:
            return None
        state = self._state(str(row["gallery"]))
        # A row of a dropped generation (a registration that lost its race with a drop) is not an item.
        return _item(row) if state.exists and int(row["generation"]) == state.generation else None

    def get_image(self, item_id: str) -> bytes | None:
        """Crops are not kept in Milvus (a VARCHAR holds at most 64 KiB and crops may reach REID_MAX_FILE_BYTES;
        a blob store beside Milvus would be the place): GET /gallery/{id}/image answers 404 image_not_stored."""
        return None

    def _all_states(self) -> list[_GalleryState]:
        rows = self._catalog_query('kind in ["collection", "dropped"]')
        return sorted((s for s in _states(rows).values() if s.exists), key=lambda s: s.name)

    def list_items(
        self, collection: str | None, offset: int, limit: int, after: str | None = None
    ) -> tuple[int, list[GalleryItem]]:
        """Registration order is ``seq`` order (ties by id). Milvus returns query rows in no fixed order and caps
        offset + limit (16,384), so (seq, id) pairs are read with a query iterator, sorted here, and only the
        page's rows fetched. ``after`` is placed by its item's seq, or by the seq its delete recorded in the
        catalog (ids are content-derived, not time-ordered): UnknownCursorError when neither is there."""
        states = [self._existing(collection)] if collection is not None else self._all_states()
        if not states:
            if after is not None:
                raise UnknownCursorError(after)
            return 0, []
        expr = " or ".join(f"({self._gallery_expr(s)})" for s in states)
        keys = sorted(self._read(self.items_name, "an id scan", functools.partial(self._scan_keys, expr)))
        if after is not None:
            position = self._cursor_key(after)
            page_ids = [key[1] for key in keys if key > position][:limit]
        else:
            page_ids = [key[1] for key in keys[offset : offset + limit]]
        rows = self._rows_by_id(page_ids, _ITEM_FIELDS)
        return len(keys), [_item(rows[i]) for i in page_ids if i in rows]

    def _cursor_key(self, after: str) -> tuple[int, str]:
        row = self._rows_by_id([after], ["id", "seq"]).get(after)
        if row is None:
            gone = self._catalog_query(f"key == {literal('deleted/' + after)}")
            if not gone:
                raise UnknownCursorError(after)
            return int((gone[0].get("value") or {}).get("seq", 0)), after
        return int(row["seq"]), after

    def _scan_keys(self, expr: str, options: dict[str, Any]) -> list[tuple[int, str]]:
        # Up to Milvus's result cap one query reads the keys with this read's own consistency options (the
        # standalone server's query iterator takes its own read timestamp and missed this replica's latest
        # writes); past the cap the iterator pages through them.
        rows = self._client.query(
            self.items_name,
            filter=expr,
            output_fields=["id", "seq"],
            limit=_QUERY_RESULT_CAP,
            timeout=self.config.timeout_s,
            **options,
        )
        if len(rows) < _QUERY_RESULT_CAP:
            return [(int(r["seq"]), str(r["id"])) for r in rows]
        iterator = self._client.query_iterator(
            self.items_name,
            batch_size=4096,
            filter=expr,
            output_fields=["id", "seq"],
            timeout=self.config.timeout_s,
            **options,
        )
        keys: list[tuple[int, str]] = []
        try:
            while batch := iterator.next():
                keys.extend((int(r["seq"]), str(r["id"])) for r in batch)
        finally:
            iterator.close()
        return keys

    def collections(self) -> list[CollectionInfo]:
        infos = []
        for state in self._all_states():
            size = self._count(self._gallery_expr(state))
            self._observer.set_gallery_size(state.name, size)
            infos.append(CollectionInfo(state.name, size, state.created_at))
        return infos

    def size(self, collection: str) -> int:
        # A count only when asked (GET /collections, /info): writes never count. The size gauge follows it.
        state = self._state(collection)
        count = self._count(self._gallery_expr(state)) if state.exists else 0
        self._observer.set_gallery_size(collection, count)
        return count

    def health(self) -> GalleryHealth:
        try:
            # A real read through the same path as the routes (reloading released collections), not a ping.
            self._catalog_query(f"key == {literal('model/' + self._fingerprint)}")
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

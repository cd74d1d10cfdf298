"""HTTP layer: multipart parsing, validation and response shaping. Heavy work is delegated: decoding to the
decode thread pool, inference to the batcher, FAISS and SQLite calls to worker threads.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Annotated, Any
from uuid import UUID

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Path, Query, Request, UploadFile
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.deps import ServiceState, StateDep, require_api_key
from service.errors import ImageError, NotFoundError, NotReadyError, OverloadedError, ServiceError
from service.imaging import DecodedCrop, decode_crop
from service.schemas import (
    COLLECTION_PATTERN,
    Candidate,
    CollectionInfoOut,
    CollectionsResponse,
    DeletedCollection,
    DeletedItem,
    ErrorResponse,
    GalleryAddResponse,
    GalleryItem,
    GalleryItemDetail,
    GalleryPage,
    HealthResponse,
    InfoResponse,
    Match,
    QueryResponse,
    QueryResult,
)
from service.store import GalleryRow, NewItem

logger = logging.getLogger(__name__)

MAX_LABEL_LENGTH = 128
# SQLite integers are 64-bit (a larger OFFSET raised OverflowError -> 500); 2**53 also stays exact in JSON clients.
MAX_OFFSET = 2**53


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse} for code in codes}


health_router = APIRouter(tags=["health"])
api_router = APIRouter(dependencies=[Depends(require_api_key)], responses=_errors(401, 500, 503))

FilesField = Annotated[
    list[UploadFile],
    File(min_length=1, description="One or more player crops (JPEG, PNG or WebP), one part per crop."),
]
CollectionForm = Annotated[
    str,
    Form(
        pattern=COLLECTION_PATTERN,
        description="Collection (gallery) name, [A-Za-z0-9_.-]{1,64}.",
        examples=["match-2024-05-12"],
    ),
]


# ---------------------------------------------------------------- helpers


def _check_file_count(state: ServiceState, files: list[UploadFile]) -> None:
    if len(files) > state.settings.max_files:
        raise ServiceError(
            413, "too_many_files", f"{len(files)} files sent, at most {state.settings.max_files} per request"
        )


async def _decode_all(state: ServiceState, files: list[UploadFile]) -> list[DecodedCrop]:
    """Decode every upload in the thread pool; the first bad file (by position) is the error reported."""
    limits = state.image_limits
    payloads: list[bytes] = []
    for i, upload in enumerate(files):
        if upload.size is not None and upload.size > limits.max_file_bytes:
            raise ImageError(
                413,
                "file_too_large",
                i,
                upload.filename,
                f"{upload.size} bytes exceeds the per-file limit of {limits.max_file_bytes} bytes",
            )
        payloads.append(await upload.read())
    loop = asyncio.get_running_loop()
    tasks = [
        loop.run_in_executor(
            state.decode_pool, decode_crop, data, i, upload.filename, state.embedder.input_size, limits
        )
        for i, (data, upload) in enumerate(zip(payloads, files, strict=True))
    ]
    decoded = await asyncio.gather(*tasks, return_exceptions=True)
    for outcome in decoded:
        if isinstance(outcome, BaseException):
            raise outcome
    return [d for d in decoded if isinstance(d, DecodedCrop)]


def _admit(state: ServiceState, count: int) -> None:
    """Refuse a request under overload before paying for decoding its uploads."""
    try:
        state.batcher.ensure_capacity(count)
    except OverloadedError:
        state.metrics.rejected.labels(reason="overloaded").inc()
        raise


async def _embed(state: ServiceState, crops: list[DecodedCrop]) -> np.ndarray:
    try:
        return await state.batcher.embed([c.pixels for c in crops])
    except OverloadedError:
        state.metrics.rejected.labels(reason="overloaded").inc()
        raise


def _parse_metadata(raw: list[str] | None, count: int) -> list[dict[str, Any]]:
    if not raw:
        return [{} for _ in range(count)]
    if len(raw) != count:
        raise ServiceError(
            422,
            "metadata_count_mismatch",
            f"{len(raw)} metadata fields for {count} files: send one per file (or none)",
        )
    parsed: list[dict[str, Any]] = []
    for i, text in enumerate(raw):
        if not text.strip():
            parsed.append({})
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ServiceError(422, "invalid_metadata", f"metadata #{i} is not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise ServiceError(
                422, "invalid_metadata", f"metadata #{i} must be a JSON object, got {type(value).__name__}"
            )
        parsed.append(value)
    return parsed


def _check_labels(labels: list[str], count: int) -> None:
    if len(labels) != count:
        raise ServiceError(
            422,
            "label_count_mismatch",
            f"{len(labels)} labels for {count} files: send one `labels` field per file",
        )
    for i, label in enumerate(labels):
        if not label.strip() or len(label) > MAX_LABEL_LENGTH:
            raise ServiceError(
                422, "invalid_label", f"label #{i} must be 1 to {MAX_LABEL_LENGTH} characters and not blank"
            )


async def _require_collection(state: ServiceState, collection: str) -> None:
    if not await asyncio.to_thread(state.store.collection_exists, collection):
        raise NotFoundError("collection_not_found", f"collection {collection!r} does not exist")


def _detail(row: GalleryRow) -> GalleryItemDetail:
    return GalleryItemDetail(
        id=UUID(row.id),
        label=row.label,
        collection=row.collection,
        metadata=row.metadata,
        created_at=row.created_at,
        sha256=row.sha256,
    )


def _rank(hits: list[tuple[int, float]], rows: dict[int, GalleryRow], threshold: float) -> QueryResult:
    matches = [Match(id=UUID(rows[i].id), label=rows[i].label, score=s) for i, s in hits if i in rows]
    best: dict[str, float] = {}
    for m in matches:  # matches are best first, so the first score seen per label is its best
        best.setdefault(m.label, m.score)
    candidates = [Candidate(label=label, score=score) for label, score in best.items()]
    top = matches[0] if matches else None
    return QueryResult(
        matches=matches,
        candidates=candidates,
        match=top.label if top is not None and top.score >= threshold else None,
    )


# Writes touch SQLite then the index. Each pair runs in one worker-thread call under state.write_lock, so a
# cancelled request (client gone) cannot stop between the commit and the index update, and a concurrent
# delete cannot interleave between the two.


def _commit_items(
    state: ServiceState, collection: str, items: list[NewItem], embeddings: np.ndarray
) -> list[GalleryRow]:
    with state.write_lock:
        rows = state.store.insert_items(collection, items)
        ids = np.array([r.faiss_id for r in rows], dtype=np.int64)
        try:
            state.index.add(collection, ids, embeddings)
        except Exception:
            # Keep SQLite and the index in agreement: undo the commit, then report the failure.
            logger.exception("index add failed; removing the %d rows just committed", len(rows))
            for row in rows:
                state.store.delete_item(row.id)
            raise
        state.metrics.set_gallery_size(collection, state.index.size(collection))
    return rows


def _delete_item(state: ServiceState, item_id: str) -> GalleryRow | None:
    with state.write_lock:
        row = state.store.delete_item(item_id)
        if row is not None:
            state.index.remove(row.collection, np.array([row.faiss_id], dtype=np.int64))
            state.metrics.set_gallery_size(row.collection, state.index.size(row.collection))
    return row


def _delete_collection(state: ServiceState, name: str) -> list[int] | None:
    with state.write_lock:
        ids = state.store.delete_collection(name)
        if ids is not None:
            state.index.drop(name)
            state.metrics.forget_collection(name)
    return ids


# ---------------------------------------------------------------- health


@health_router.get("/healthz", response_model=HealthResponse, summary="Liveness: the process answers")
async def healthz() -> HealthResponse:
    return HealthResponse(status="ok")


@health_router.get(
    "/readyz",
    response_model=HealthResponse,
    responses=_errors(503),
    summary="Readiness: model loaded and warmed up, indexes rebuilt",
)
async def readyz(request: Request) -> HealthResponse:
    state: ServiceState | None = getattr(request.app.state, "reid", None)
    if state is None or not state.ready:
        raise NotReadyError("model or index not ready yet")
    return HealthResponse(status="ready")


# ---------------------------------------------------------------- gallery


@api_router.post(
    "/gallery",
    status_code=201,
    response_model=GalleryAddResponse,
    tags=["gallery"],
    responses=_errors(400, 413, 415, 422),
    summary="Register crops (all or nothing)",
)
async def add_to_gallery(
    state: StateDep,
    files: FilesField,
    collection: CollectionForm,
    labels: Annotated[
        list[str],
        Form(
            min_length=1,
            description="Player identity per file, one field per file, in file order.",
            examples=[["home-7"]],
        ),
    ],
    metadata: Annotated[
        list[str] | None,
        Form(
            description="Optional JSON object per file (one field per file, in file order).",
            examples=[['{"frame": 1532, "camera": "main"}']],
        ),
    ] = None,
) -> GalleryAddResponse:
    _check_file_count(state, files)
    _check_labels(labels, len(files))
    parsed_metadata = _parse_metadata(metadata, len(files))
    _admit(state, len(files))
    crops = await _decode_all(state, files)
    embeddings = await _embed(state, crops)
    items = [
        NewItem(label=label, metadata=meta, sha256=crop.sha256, embedding=emb)
        for label, meta, crop, emb in zip(labels, parsed_metadata, crops, embeddings, strict=True)
    ]
    rows = await asyncio.to_thread(_commit_items, state, collection, items, embeddings)
    logger.info("registered %d crops in %s", len(rows), collection)
    return GalleryAddResponse(items=[GalleryItem(id=UUID(r.id), label=r.label, collection=r.collection) for r in rows])


@api_router.get(
    "/gallery",
    response_model=GalleryPage,
    tags=["gallery"],
    responses=_errors(404, 422),
    summary="List gallery items, one page at a time",
)
async def list_gallery(
    state: StateDep,
    collection: Annotated[
        str | None,
        Query(
            pattern=COLLECTION_PATTERN,
            description="Only this collection (all when omitted).",
            examples=["match-2024-05-12"],
        ),
    ] = None,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Items to skip.", examples=[0])] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size.", examples=[50])] = 50,
) -> GalleryPage:
    if collection is not None:
        await _require_collection(state, collection)
    total, rows = await asyncio.to_thread(state.store.list_items, collection, offset, limit)
    return GalleryPage(total=total, offset=offset, limit=limit, items=[_detail(r) for r in rows])


ItemIdPath = Annotated[UUID, Path(description="Gallery item id.", examples=["3f1c2a9e-7b4d-4e8a-9c0f-2d6b5a1e8f70"])]


@api_router.get(
    "/gallery/{item_id}",
    response_model=GalleryItemDetail,
    tags=["gallery"],
    responses=_errors(404, 422),
    summary="One gallery item",
)
async def get_gallery_item(state: StateDep, item_id: ItemIdPath) -> GalleryItemDetail:
    row = await asyncio.to_thread(state.store.get, str(item_id))
    if row is None:
        raise NotFoundError("item_not_found", f"no gallery item with id {item_id}")
    return _detail(row)


@api_router.delete(
    "/gallery/{item_id}",
    response_model=DeletedItem,
    tags=["gallery"],
    responses=_errors(404, 422),
    summary="Delete one gallery item",
)
async def delete_gallery_item(state: StateDep, item_id: ItemIdPath) -> DeletedItem:
    row = await asyncio.to_thread(_delete_item, state, str(item_id))
    if row is None:
        raise NotFoundError("item_not_found", f"no gallery item with id {item_id}")
    return DeletedItem(id=item_id, collection=row.collection, deleted=True)


# ---------------------------------------------------------------- collections


@api_router.get(
    "/collections",
    response_model=CollectionsResponse,
    tags=["collections"],
    summary="All collections with their sizes",
)
async def list_collections(state: StateDep) -> CollectionsResponse:
    infos = await asyncio.to_thread(state.store.collections)
    return CollectionsResponse(
        collections=[CollectionInfoOut(name=c.name, size=c.size, created_at=c.created_at) for c in infos]
    )


@api_router.delete(
    "/collections/{name}",
    response_model=DeletedCollection,
    tags=["collections"],
    responses=_errors(404, 422),
    summary="Delete a collection and all its items",
)
async def delete_collection(
    state: StateDep,
    name: Annotated[
        str, Path(pattern=COLLECTION_PATTERN, description="Collection name.", examples=["match-2024-05-12"])
    ],
) -> DeletedCollection:
    ids = await asyncio.to_thread(_delete_collection, state, name)
    if ids is None:
        raise NotFoundError("collection_not_found", f"collection {name!r} does not exist")
    logger.info("deleted collection %s (%d items)", name, len(ids))
    return DeletedCollection(name=name, deleted_items=len(ids))


# ---------------------------------------------------------------- query


@api_router.post(
    "/query",
    response_model=QueryResponse,
    tags=["query"],
    responses=_errors(400, 404, 413, 415, 422),
    summary="Who is this crop? Ranked matches per crop",
)
async def query(
    state: StateDep,
    files: FilesField,
    collection: CollectionForm,
    top_k: Annotated[int, Form(ge=1, le=1000, description="Matches returned per crop.", examples=[10])] = 10,
    threshold: Annotated[
        float | None,
        Form(ge=-1.0, le=1.0, description="Override of the match threshold (cosine, -1..1).", examples=[0.6]),
    ] = None,
) -> QueryResponse:
    _check_file_count(state, files)
    await _require_collection(state, collection)
    _admit(state, len(files))
    crops = await _decode_all(state, files)
    embeddings = await _embed(state, crops)
    hits = await asyncio.to_thread(state.index.search, collection, embeddings, top_k)
    rows = await asyncio.to_thread(state.store.get_by_faiss_ids, [i for per in hits for i, _ in per])
    used = state.threshold.value if threshold is None else threshold
    return QueryResponse(results=[_rank(per, rows, used) for per in hits], threshold=used)


# ---------------------------------------------------------------- info and metrics


@api_router.get("/info", response_model=InfoResponse, tags=["info"], summary="Model card of the checkpoint")
async def info(state: StateDep) -> InfoResponse:
    embedder = state.embedder.info
    spec = embedder.spec
    return InfoResponse(
        architecture=spec.architecture,
        embedding_dim=spec.embedding_dim,
        input_size=[spec.preprocess.height, spec.preprocess.width],
        threshold=state.threshold.value,
        threshold_source=state.threshold.source,
        checkpoint_threshold=state.threshold.checkpoint_value,
        device=embedder.device,
        autocast=embedder.autocast,
        runtime=embedder.runtime,
        runtime_reason=embedder.runtime_reason,
        format_version=spec.format_version,
        checkpoint=embedder.checkpoint.rsplit("/", 1)[-1],
        metrics=dict(spec.metrics),
        train_meta=dict(spec.train_meta),
        max_batch_size=state.settings.max_batch_size,
        max_files=state.settings.max_files,
    )


@api_router.get(
    "/metrics",
    tags=["info"],
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
)
async def metrics(request: Request) -> Response:
    # Served even before readiness: a scrape during start-up should see the process, not a 503.
    service_metrics = request.app.state.metrics
    return Response(service_metrics.render(), media_type=CONTENT_TYPE_LATEST)

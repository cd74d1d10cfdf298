"""HTTP layer: multipart parsing, validation and response shaping. Heavy work is delegated: decoding to the
decode thread pool, inference to the batcher, FAISS and SQLite calls to worker threads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Annotated, Any
from uuid import UUID

import numpy as np
import orjson
from fastapi import APIRouter, Depends, File, Form, Path, Query, Request, UploadFile
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BeforeValidator, Field

from service.core.errors import ImageError, NotFoundError, NotReadyError, OverloadedError, ServiceError
from service.core.headers import IMAGE_CSP
from service.core.version import VERSION
from service.gallery import BackendUnavailableError, CollectionNotFoundError, GalleryItem, NewItem
from service.http.deps import ServiceState, StateDep, require_api_key
from service.http.schemas import (
    COLLECTION_PATTERN,
    CollectionInfoOut,
    CollectionsResponse,
    DeletedCollection,
    DeletedItem,
    DuplicateErrorResponse,
    ErrorResponse,
    GalleryAddResponse,
    GalleryItemDetail,
    GalleryPage,
    HealthResponse,
    InfoResponse,
    QueryResponse,
)
from service.http.schemas import (
    GalleryItem as GalleryItemOut,
)
from service.http.tracklets import parse_tracklets, pool_queries, rank_matches
from service.inference.imaging import DecodedCrop, ImageLimits, decode_crop, stored_media_type

logger = logging.getLogger(__name__)

MAX_LABEL_LENGTH = 128
# Per item's JSON metadata, on every backend alike (Milvus caps a JSON field at 64 KiB).
MAX_METADATA_BYTES = 16 * 1024
# SQLite integers are 64-bit (a larger OFFSET raised OverflowError -> 500); 2**53 also stays exact in JSON clients.
MAX_OFFSET = 2**53


# One example body per status, as the service really answers it (files are counted from #0).
ERROR_EXAMPLES: dict[int, dict[str, str]] = {
    400: {"error": "invalid_image", "detail": "file #0 ('crop.png'): the image data is truncated or corrupt"},
    401: {"error": "unauthorized", "detail": "missing or wrong API key (X-API-Key or Authorization: Bearer)"},
    404: {"error": "collection_not_found", "detail": "collection 'match-2024-05-12' does not exist"},
    413: {"error": "too_many_files", "detail": "80 files sent, at most 64 per request"},
    415: {"error": "unsupported_media_type", "detail": "file #0 ('crop.gif'): not a JPEG, PNG or WebP image"},
    422: {"error": "validation_error", "detail": "body.files: Field required"},
    500: {"error": "internal_error", "detail": "internal server error"},
    507: {
        "error": "insufficient_storage",
        "detail": "the disk holding the gallery is full (SQLite: database or disk is full) while registering 2 "
        "items; nothing was changed and everything registered before is kept: free disk space, then retry",
    },
    503: {
        "error": "overloaded",
        "detail": "inference queue full (1020 of 1024 crops waiting, this request adds 8); retry later",
    },
}


_ITEM_404 = {404: {"error": "item_not_found", "detail": "no gallery item with id 3f1c2a9e-7b4d-4e8a-9c0f-2d6b5a1e8f70"}}


def _errors(*codes: int, examples: dict[int, dict[str, str]] | None = None) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for error ``codes``: the shared ErrorResponse shape, each with its own example
    (``examples`` overrides ERROR_EXAMPLES for one operation)."""
    chosen = {**ERROR_EXAMPLES, **(examples or {})}
    return {
        code: {"model": ErrorResponse, "content": {"application/json": {"example": chosen[code]}}} for code in codes
    }


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


def _blank_is_none(value: Any) -> Any:
    """An optional form field left empty: HTML forms send "", Swagger UI's Try it out sends "null"."""
    return None if isinstance(value, str) and value.strip() in ("", "null") else value


def _check_file_count(state: ServiceState, files: list[UploadFile]) -> None:
    if len(files) > state.settings.max_files:
        raise ServiceError(
            413, "too_many_files", f"{len(files)} files sent, at most {state.settings.max_files} per request"
        )


# Crops per decode task: one task (one thread hop) for small requests, a few tasks in parallel for large ones.
_DECODE_CHUNK_MIN = 4


def _decode_chunk(
    payloads: list[tuple[int, bytes, str | None]],
    input_size: tuple[int, int],
    limits: ImageLimits,
    collection_check: Callable[[], bool] | None,
) -> tuple[bool, list[DecodedCrop] | ImageError]:
    """Runs in the decode pool: (the collection exists, the decoded crops or the chunk's first bad file)."""
    exists = collection_check() if collection_check is not None else True
    decoded: list[DecodedCrop] = []
    for index, data, filename in payloads:
        try:
            decoded.append(decode_crop(data, index, filename, input_size, limits))
        except ImageError as exc:
            return exists, exc
    return exists, decoded


async def _decode_all(
    state: ServiceState, files: list[UploadFile], collection: str | None = None
) -> tuple[list[DecodedCrop], list[bytes]]:
    """Decode every upload in the decode pool; the first bad file (by position) is the error reported.

    With ``collection``, the first task also checks that the collection exists (no extra thread hop), and an unknown
    collection (404) outranks any bad file. Returns the decoded crops and the uploaded bytes (kept as the item's
    image when crops are stored).
    """
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
    numbered = [(i, data, upload.filename) for i, (data, upload) in enumerate(zip(payloads, files, strict=True))]
    per_task = max(_DECODE_CHUNK_MIN, math.ceil(len(numbered) / state.settings.decode_workers))
    chunks = [numbered[lo : lo + per_task] for lo in range(0, len(numbered), per_task)]
    check = None
    if collection is not None:
        gallery = state.gallery

        def check() -> bool:
            return gallery.has_collection(collection)

    loop = asyncio.get_running_loop()
    size = state.embedder.input_size
    outcomes = await asyncio.gather(
        *(
            loop.run_in_executor(state.decode_pool, _decode_chunk, chunk, size, limits, check if i == 0 else None)
            for i, chunk in enumerate(chunks)
        )
    )
    if not outcomes[0][0]:
        assert collection is not None
        raise CollectionNotFoundError(collection)
    crops: list[DecodedCrop] = []
    for _, decoded in outcomes:
        if isinstance(decoded, ImageError):
            raise decoded
        crops.extend(decoded)
    return crops, payloads


def _admit(state: ServiceState, count: int) -> None:
    """Refuse a request under overload before paying for decoding its uploads."""
    try:
        state.batcher.ensure_capacity(count)
    except OverloadedError:
        state.metrics.rejected.labels(reason="overloaded").inc()
        raise


class ClientGoneError(ServiceError):
    """The client closed the connection while its crops waited for inference; nobody reads this answer."""

    def __init__(self) -> None:
        super().__init__(499, "client_closed_request", "the client closed the connection before the answer")


async def _client_gone(request: Request) -> None:
    """Return once the ASGI server reports the client's disconnect.

    Called after the body has been read in full, so ``receive`` has nothing else to deliver: it blocks until the
    connection is lost (uvicorn then answers ``http.disconnect``).
    """
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _embed(state: ServiceState, crops: list[DecodedCrop], request: Request) -> np.ndarray:
    """Embed a request's crops (N, D), unless its client disconnects first.

    On a disconnect the wait for the batcher is cancelled, which cancels the request's future: the batcher drops
    the crops still queued instead of embedding them for nobody (service/inference/batching.py), so under overload
    the capacity goes to the clients still waiting. Raises ClientGoneError then.
    """
    embedding = asyncio.ensure_future(state.batcher.embed([c.pixels for c in crops]))
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        done, _ = await asyncio.wait((embedding, gone), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        embedding.cancel()
        gone.cancel()
        raise
    gone.cancel()
    if embedding not in done:
        embedding.cancel()  # cancels the request's future: the batcher drops its crops still queued
        state.metrics.abandoned.inc()
        logger.info("client gone: dropped its %d queued crops", len(crops))
        raise ClientGoneError()
    try:
        return embedding.result()
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
        if len(text.encode()) > MAX_METADATA_BYTES:
            raise ServiceError(
                422, "metadata_too_large", f"metadata #{i} is {len(text.encode())} bytes, at most {MAX_METADATA_BYTES}"
            )
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


def _detail(item: GalleryItem) -> GalleryItemDetail:
    return GalleryItemDetail(
        id=UUID(item.id),
        label=item.label,
        collection=item.collection,
        metadata=item.metadata,
        created_at=item.created_at,
        sha256=item.sha256,
    )


# ---------------------------------------------------------------- health


@health_router.get(
    "/healthz",
    response_model=HealthResponse,
    responses=_errors(503),
    summary="Liveness: the process answers (503 startup_failed once start-up has given up)",
)
async def healthz(request: Request) -> HealthResponse:
    failed = getattr(getattr(request.app.state, "startup", None), "failed", "")
    if failed:  # start-up gave up (e.g. Milvus never answered): let the orchestrator restart the process
        raise ServiceError(503, "startup_failed", failed)
    return HealthResponse(status="ok")


@health_router.get(
    "/readyz",
    response_model=HealthResponse,
    responses=_errors(
        503, examples={503: {"error": "not_ready", "detail": "model or index not ready yet"}}
    ),
    summary="Readiness: model loaded and warmed up, indexes rebuilt",
)
async def readyz(request: Request) -> HealthResponse:
    state: ServiceState | None = getattr(request.app.state, "reid", None)
    if state is None or not state.ready:
        startup = getattr(request.app.state, "startup", None)
        if startup is not None and startup.failed:
            raise ServiceError(503, "startup_failed", startup.failed)
        raise NotReadyError(getattr(startup, "waiting", "") or "model or index not ready yet")
    health = await asyncio.to_thread(state.gallery.health)
    if not health.ok:
        raise BackendUnavailableError(f"gallery backend {health.backend!r}: {health.detail}")
    return HealthResponse(status="ready")


# ---------------------------------------------------------------- gallery


@api_router.post(
    "/gallery",
    status_code=201,
    response_model=GalleryAddResponse,
    tags=["gallery"],
    responses={
        **_errors(
            400,
            413,
            415,
            422,
            507,
            examples={422: {"error": "label_count_mismatch", "detail": "1 labels for 2 files: send one `labels` "
                            "field per file"}},
        ),
        409: {
            "model": DuplicateErrorResponse,
            "content": {
                "application/json": {
                    "example": {
                        "error": "duplicate_crop",
                        "detail": "in collection 'match-2024-05-12': file #0 is already item "
                        "3f1c2a9e-7b4d-4e8a-9c0f-2d6b5a1e8f70; nothing was registered",
                        "duplicates": [{"file": 0, "id": "3f1c2a9e-7b4d-4e8a-9c0f-2d6b5a1e8f70"}],
                    }
                }
            },
        },
    },
    summary="Register crops (all or nothing)",
    description=(
        "Registers every file or none. The same crop bytes (by SHA-256) cannot be registered twice in one "
        "collection: such a request answers 409 `duplicate_crop` with the id of the item already holding them, "
        "and registers nothing."
    ),
)
async def add_to_gallery(
    request: Request,
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
            description='Optional JSON object per file (one field per file, in file order), e.g. '
            '`{"frame": 1532, "camera": "main"}`.',
            # Empty on purpose: /docs pre-fills fields from the example, and one sample value would not match
            # the number of files a user picks.
            examples=[[]],
        ),
    ] = None,
) -> GalleryAddResponse:
    _check_file_count(state, files)
    _check_labels(labels, len(files))
    parsed_metadata = _parse_metadata(metadata, len(files))
    _admit(state, len(files))
    crops, payloads = await _decode_all(state, files)
    embeddings = await _embed(state, crops, request)
    keep = state.settings.store_crops
    items = [
        NewItem(label=label, metadata=meta, sha256=crop.sha256, embedding=emb, crop=data if keep else None)
        for label, meta, crop, emb, data in zip(labels, parsed_metadata, crops, embeddings, payloads, strict=True)
    ]
    added = await asyncio.to_thread(state.gallery.add, collection, items)
    logger.info("registered %d crops in %s", len(added), collection)
    return GalleryAddResponse(
        items=[GalleryItemOut(id=UUID(a.id), label=a.label, collection=a.collection) for a in added]
    )


@api_router.get(
    "/gallery",
    response_model=GalleryPage,
    tags=["gallery"],
    responses=_errors(400, 404, 422),
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
    offset: Annotated[
        int,
        Query(
            ge=0,
            le=MAX_OFFSET,
            description="Items to skip (shifts when items are deleted; prefer after).",
            examples=[0],
        ),
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size.", examples=[50])] = 50,
    after: Annotated[
        UUID | None,
        Query(
            description=(
                "Cursor: start right after this item (the previous page's next). Nothing is skipped or repeated "
                "when items are deleted between pages, even the cursor item itself."
            ),
            examples=["0190f1c2-5a3b-7000-8d1e-2d6b5a1e8f70"],
        ),
    ] = None,
) -> GalleryPage:
    if after is not None and offset:
        raise ServiceError(400, "bad_request", "give either offset or after, not both")
    cursor = None if after is None else str(after)
    total, items = await asyncio.to_thread(state.gallery.list_items, collection, offset, limit, cursor)
    return GalleryPage(
        total=total,
        offset=offset,
        limit=limit,
        after=after,
        next=UUID(items[-1].id) if len(items) == limit else None,
        items=[_detail(i) for i in items],
    )


ItemIdPath = Annotated[UUID, Path(description="Gallery item id.", examples=["3f1c2a9e-7b4d-4e8a-9c0f-2d6b5a1e8f70"])]


@api_router.get(
    "/gallery/{item_id}",
    response_model=GalleryItemDetail,
    tags=["gallery"],
    responses=_errors(404, 422, examples=_ITEM_404),
    summary="One gallery item",
)
async def get_gallery_item(state: StateDep, item_id: ItemIdPath) -> GalleryItemDetail:
    item = await asyncio.to_thread(state.gallery.get, str(item_id))
    if item is None:
        raise NotFoundError("item_not_found", f"no gallery item with id {item_id}")
    return _detail(item)


@api_router.get(
    "/gallery/{item_id}/image",
    tags=["gallery"],
    response_class=Response,
    responses={
        **_errors(404, 422, examples=_ITEM_404),
        200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}},
    },
    summary="The crop registered for an item, exactly as uploaded",
    description="Served as the image type its bytes decode as (JPEG, PNG or WebP, never another type), with "
    "`Content-Security-Policy: sandbox` and `Content-Disposition: inline`, so a browser shows it only as an "
    "image. 404 `image_not_stored` when the item was registered while REID_STORE_CROPS was off, or the "
    "gallery backend keeps no crops (`milvus`).",
)
async def get_gallery_image(state: StateDep, item_id: ItemIdPath) -> Response:
    data = await asyncio.to_thread(state.gallery.get_image, str(item_id))
    if data is None:
        if await asyncio.to_thread(state.gallery.get, str(item_id)) is None:
            raise NotFoundError("item_not_found", f"no gallery item with id {item_id}")
        where = "" if state.gallery.backend == "local" else f" (the {state.gallery.backend} backend keeps no crops)"
        raise NotFoundError("image_not_stored", f"item {item_id} was registered without keeping its crop{where}")
    media_type = await asyncio.to_thread(stored_media_type, data)
    if media_type is None:
        # decode_crop accepted these bytes at registration; anything else means the stored copy is damaged,
        # and bytes a browser might read as another type are never served.
        raise ServiceError(500, "stored_crop_unreadable", f"the stored crop of item {item_id} is not a readable image")
    extension = media_type.removeprefix("image/").replace("jpeg", "jpg")
    headers = {
        "Content-Security-Policy": IMAGE_CSP,
        # The file name is built from the id (a UUID) and the type: nothing the uploader chose reaches a header.
        "Content-Disposition": f'inline; filename="{item_id}.{extension}"',
    }
    return Response(data, media_type=media_type, headers=headers)


@api_router.delete(
    "/gallery/{item_id}",
    response_model=DeletedItem,
    tags=["gallery"],
    responses=_errors(404, 422, 507, examples=_ITEM_404),
    summary="Delete one gallery item",
)
async def delete_gallery_item(state: StateDep, item_id: ItemIdPath) -> DeletedItem:
    item = await asyncio.to_thread(state.gallery.delete, str(item_id))
    if item is None:
        raise NotFoundError("item_not_found", f"no gallery item with id {item_id}")
    return DeletedItem(id=item_id, collection=item.collection, deleted=True)


# ---------------------------------------------------------------- collections


@api_router.get(
    "/collections",
    response_model=CollectionsResponse,
    tags=["collections"],
    summary="All collections with their sizes",
)
async def list_collections(state: StateDep) -> CollectionsResponse:
    infos = await asyncio.to_thread(state.gallery.collections)
    return CollectionsResponse(
        collections=[CollectionInfoOut(name=c.name, size=c.size, created_at=c.created_at) for c in infos]
    )


@api_router.delete(
    "/collections/{name}",
    response_model=DeletedCollection,
    tags=["collections"],
    responses=_errors(404, 422, 507),
    summary="Delete a collection and all its items",
)
async def delete_collection(
    state: StateDep,
    name: Annotated[
        str, Path(pattern=COLLECTION_PATTERN, description="Collection name.", examples=["match-2024-05-12"])
    ],
) -> DeletedCollection:
    deleted = await asyncio.to_thread(state.gallery.drop_collection, name)
    if deleted is None:
        raise CollectionNotFoundError(name)
    logger.info("deleted collection %s (%d items)", name, deleted)
    return DeletedCollection(name=name, deleted_items=deleted)


# ---------------------------------------------------------------- query


@api_router.post(
    "/query",
    response_model=QueryResponse,
    tags=["query"],
    responses=_errors(400, 404, 413, 415, 422),
    summary="Who is this crop? Ranked matches per crop",
)
async def query(
    request: Request,
    state: StateDep,
    files: FilesField,
    collection: CollectionForm,
    top_k: Annotated[int, Form(ge=1, le=1000, description="Matches returned per crop.", examples=[10])] = 10,
    threshold: Annotated[
        Annotated[float, Field(ge=-1.0, le=1.0)] | None,
        BeforeValidator(_blank_is_none),
        Form(
            description="Override of the match threshold (cosine, -1..1), e.g. 0.6; empty: the calibrated one "
            "(GET /info).",
            # null, so /docs leaves the field empty (without an example it pre-fills the minimum, -1).
            examples=[None],
        ),
    ] = None,
    tracklets: Annotated[
        list[str] | None,
        Form(
            description="Optional tracklet per file (one field per file, in file order): files sharing a value are "
            "pooled into one query, answered once, in order of first appearance (e.g. `track-12`).",
            examples=[[]],  # empty for /docs, as metadata above
        ),
    ] = None,
) -> Response:
    started = time.perf_counter()
    _check_file_count(state, files)
    groups = parse_tracklets(tracklets, len(files))
    _admit(state, len(files))
    crops, _ = await _decode_all(state, files, collection=collection)
    decoded = time.perf_counter()
    queries = pool_queries(await _embed(state, crops, request), groups)  # (Q, D) crops -> (T, D), one per tracklet
    embedded = time.perf_counter()
    hits = await state.searcher.search(collection, queries, top_k)
    searched = time.perf_counter()
    policy = state.threshold
    body = {
        "results": [
            rank_matches(per, policy.for_crops(g.crops, threshold), g) for per, g in zip(hits, groups, strict=True)
        ],
        "threshold": policy.for_crops(1, threshold),
    }
    # The body is QueryResponse's JSON, built without pydantic (response_model above documents it; the contract
    # tests check the two agree): validating and serialising hundreds of matches per request cost more than search.
    response = Response(orjson.dumps(body), media_type="application/json")
    state.metrics.observe_query_stages(
        request.state.request_start if hasattr(request.state, "request_start") else started,
        started,
        decoded,
        embedded,
        searched,
        time.perf_counter(),
    )
    return response


# ---------------------------------------------------------------- info and metrics


@api_router.get("/info", response_model=InfoResponse, tags=["info"], summary="Model card of the checkpoint")
async def info(state: StateDep) -> InfoResponse:
    embedder = state.embedder.info
    spec = embedder.spec
    return InfoResponse(
        version=VERSION,
        architecture=spec.architecture,
        embedding_dim=spec.embedding_dim,
        input_size=[spec.preprocess.height, spec.preprocess.width],
        threshold=state.threshold.value,
        threshold_source=state.threshold.source,
        checkpoint_threshold=state.threshold.checkpoint_value,
        thresholds_by_size=dict(state.threshold.by_size),
        calibration=spec.calibration_card(),
        device=embedder.device,
        autocast=embedder.autocast,
        runtime=embedder.runtime,
        runtime_reason=embedder.runtime_reason,
        format_version=spec.format_version,
        checkpoint=embedder.checkpoint.rsplit("/", 1)[-1],
        metrics=dict(spec.metrics),
        train_meta=dict(spec.train_meta),
        provenance=dict(spec.provenance),
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
    state: ServiceState | None = getattr(request.app.state, "reid", None)
    if state is not None and state.ready and state.gallery.backend == "milvus":
        # Writes never count (through any replica, a count per write would grow with the gallery): the size
        # gauges of a shared gallery are read from Milvus when scraped, one count per collection.
        try:
            await asyncio.to_thread(state.gallery.collections)
        except BackendUnavailableError as exc:
            logger.warning("gallery sizes not refreshed for /metrics: %s", exc.detail)
    return Response(service_metrics.render(), media_type=CONTENT_TYPE_LATEST)

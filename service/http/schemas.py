"""Pydantic response models; each field carries a description and an example for the OpenAPI page."""

from __future__ import annotations

import logging
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, Field

logger = logging.getLogger(__name__)

COLLECTION_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
_ID_EXAMPLE = "3f1c2a9e-7b4d-4e8a-9c0f-2d6b5a1e8f70"


class ErrorResponse(BaseModel):
    """Shape of every 4xx/5xx answer."""

    error: str = Field(description="Stable machine-readable code.", examples=["unsupported_media_type"])
    detail: str = Field(
        description="What went wrong, for humans.",
        examples=["file #0 ('crop.gif'): not a JPEG, PNG or WebP image"],
    )


class DuplicateOut(BaseModel):
    file: int = Field(description="Position of the file in the request.", examples=[0])
    id: UUID | None = Field(
        description="Item already holding these bytes; null when the file repeats an earlier file of the request.",
        examples=[_ID_EXAMPLE],
    )


class DuplicateErrorResponse(ErrorResponse):
    """409 duplicate_crop: nothing was registered."""

    duplicates: list[DuplicateOut] = Field(description="Each file whose bytes are already in the collection.")


class GalleryItem(BaseModel):
    id: UUID = Field(description="Gallery item id (uuid4).", examples=[_ID_EXAMPLE])
    label: str = Field(description="Player identity given at registration.", examples=["home-7"])
    collection: str = Field(description="Collection the item belongs to.", examples=["match-2024-05-12"])


class GalleryAddResponse(BaseModel):
    items: list[GalleryItem] = Field(description="One entry per uploaded file, in upload order.")


class GalleryItemDetail(GalleryItem):
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Metadata given at registration.", examples=[{"frame": 1532}]
    )
    created_at: str = Field(
        description="UTC time of registration (ISO 8601).", examples=["2024-05-12T19:04:11.532+00:00"]
    )
    sha256: str = Field(
        description="SHA-256 of the uploaded file bytes.",
        examples=["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"],
    )


class GalleryPage(BaseModel):
    total: int = Field(description="Items matching the filter, over all pages.", examples=[230])
    offset: int = Field(description="Offset of the first item on this page (0 when paging with after).", examples=[0])
    limit: int = Field(description="Page size asked for.", examples=[50])
    after: UUID | None = Field(
        default=None, description="The cursor this page continues after, as given.", examples=[_ID_EXAMPLE]
    )
    next: UUID | None = Field(
        default=None,
        description=(
            "Cursor for the next page (pass it as after=): the id of this page's last item; null when this page "
            "is not full, i.e. the listing is complete. Stable while items are deleted, the cursor item included."
        ),
        examples=[_ID_EXAMPLE],
    )
    items: list[GalleryItemDetail] = Field(description="This page, oldest first.")


class DeletedItem(BaseModel):
    id: UUID = Field(description="Id of the deleted item.", examples=[_ID_EXAMPLE])
    collection: str = Field(description="Collection it was in.", examples=["match-2024-05-12"])
    deleted: bool = Field(description="Always true.", examples=[True])


class Match(BaseModel):
    id: UUID = Field(description="Gallery item id.", examples=[_ID_EXAMPLE])
    label: str = Field(description="Its player identity.", examples=["home-7"])
    score: float = Field(description="Cosine similarity in [-1, 1]; higher is closer.", examples=[0.83])


class Candidate(BaseModel):
    label: str = Field(description="Player identity.", examples=["home-7"])
    score: float = Field(
        description="Score of this identity from its items among the matches (rule: its best item's score).",
        examples=[0.83],
    )


class QueryResult(BaseModel):
    matches: list[Match] = Field(description="Up to top_k gallery items, best first.")
    candidates: list[Candidate] = Field(description="The matches grouped by label (best score each), best first.")
    match: str | None = Field(
        description="Best label when its score reaches the threshold, else null (nobody close enough).",
        examples=["home-7"],
    )
    tracklet: str | None = Field(
        default=None,
        description="The `tracklets` value of this query; null when the request sent no `tracklets`.",
        examples=["track-12"],
    )
    crops: int = Field(default=1, description="Crops pooled into this query (1 for a plain crop).", examples=[8])
    threshold: float | None = Field(
        default=None,
        description="Threshold applied to this result (calibrated per query size unless overridden).",
        examples=[0.55],
    )


class QueryResponse(BaseModel):
    results: list[QueryResult] = Field(
        description="One result per uploaded file in upload order, or, with `tracklets`, one per tracklet in order "
        "of first appearance."
    )
    threshold: float = Field(
        description="Threshold for single-crop queries (each result carries the one applied to it).", examples=[0.55]
    )


class CollectionInfoOut(BaseModel):
    name: str = Field(description="Collection name.", examples=["match-2024-05-12"])
    size: int = Field(description="Items in it.", examples=[230])
    created_at: str = Field(description="UTC creation time (ISO 8601).", examples=["2024-05-12T18:00:00.000+00:00"])


class CollectionsResponse(BaseModel):
    collections: list[CollectionInfoOut] = Field(description="All collections, sorted by name.")


class DeletedCollection(BaseModel):
    name: str = Field(description="Deleted collection.", examples=["match-2024-05-12"])
    deleted_items: int = Field(description="Gallery items removed with it.", examples=[230])


class HealthResponse(BaseModel):
    status: str = Field(description="'ok' (alive) or 'ready' (model warmed up, index loaded).", examples=["ok"])


class InfoResponse(BaseModel):
    version: str = Field(description="Version of this service (soccernet-reid).", examples=["0.2.0"])
    architecture: str = Field(description="Network architecture of the checkpoint.", examples=["osnet_x0_25"])
    embedding_dim: int = Field(description="Embedding dimension D.", examples=[512])
    # A list, not tuple[int, int]: OpenAPI 3.1 `prefixItems` trips up common schema tools (schemathesis among them).
    input_size: list[int] = Field(
        min_length=2, max_length=2, description="Model input [height, width] in pixels.", examples=[[256, 128]]
    )
    threshold: float = Field(description="Default match threshold in use.", examples=[0.55])
    threshold_source: Literal["calibrated", "checkpoint", "default", "setting"] = Field(
        description="Where it comes from: `calibrated` (the checkpoint's, measured as `calibration` records), "
        "`checkpoint` (stored in the checkpoint without a record of how it was chosen: run reid-calibrate), "
        "`setting` (REID_THRESHOLD) or `default` (REID_DEFAULT_THRESHOLD: the checkpoint carries none, run "
        "reid-calibrate).",
        examples=["calibrated"],
    )
    checkpoint_threshold: float | None = Field(
        description="Threshold stored in the checkpoint (calibrated).", examples=[0.55]
    )
    thresholds_by_size: dict[str, float] = Field(
        default_factory=dict,
        description="Thresholds per query size bucket (crops pooled) in use; empty when one threshold serves all.",
        examples=[{"1": 0.55, "2-4": 0.6, "5+": 0.62}],
    )
    calibration: dict[str, Any] | None = Field(
        default=None,
        description="Model card of the checkpoint's threshold: objective, data, measured precision and recall, "
        "written by reid-calibrate (or by reid-train: best F1 on its validation split); null when the checkpoint "
        "has none.",
        examples=[
            {
                "objective": "highest recall with precision of returned matches >= 0.9",
                "threshold": 0.61,
                "precision": 0.9,
                "recall": 0.42,
                "data": {"format": "cuhk03", "people": 467},
            }
        ],
    )
    device: str = Field(description="Where inference runs.", examples=["cuda:0"])
    autocast: str | None = Field(description="Autocast dtype on GPU, null on CPU.", examples=["bfloat16"])
    runtime: str = Field(description="Inference runtime serving: torch or onnxruntime.", examples=["onnxruntime"])
    runtime_reason: str = Field(
        description="Why this runtime serves (REID_RUNTIME, graph cache, providers, threads or fallback cause).",
        examples=["auto on CPU: cached graph 3f1c.v1.onnx, providers CPUExecutionProvider, 1 intra-op threads"],
    )
    format_version: int = Field(description="Checkpoint format version.", examples=[1])
    checkpoint: str = Field(description="Checkpoint file name.", examples=["osnet_x0_25_soccernet.safetensors"])
    metrics: dict[str, Any] = Field(
        description="Evaluation metrics stored in the checkpoint.", examples=[{"mAP": 0.71, "rank1": 0.83}]
    )
    train_meta: dict[str, Any] = Field(
        description="Training metadata stored in the checkpoint.",
        examples=[{"dataset": "soccernet", "epochs": 60}],
    )
    provenance: dict[str, Any] = Field(
        default_factory=dict,
        description="Where pretrained weights came from (source URL, sha256, licences, training data, fetched_at); "
        "empty for models trained here.",
        examples=[{"name": "osnet_x0_25_market1501", "training_data": "Market-1501", "sha256": "c0ff0917..."}],
    )
    max_batch_size: int = Field(description="Largest inference batch.", examples=[32])
    max_files: int = Field(description="Files allowed per request.", examples=[64])

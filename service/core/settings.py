"""Service settings, read from the environment with the REID_ prefix.

Example::

    REID_CHECKPOINT=artifacts/demo.safetensors REID_DATA_DIR=/var/lib/reid REID_API_KEY=secret \
        uvicorn service.app:app --port 8000
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

logger = logging.getLogger(__name__)

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_RUNTIME_PATTERN = re.compile(r"^(auto|torch|onnxruntime)$")


class Settings(BaseSettings):
    """Every knob of the service; each field maps to an environment variable REID_<FIELD NAME>."""

    model_config = SettingsConfigDict(env_prefix="REID_", frozen=True, extra="ignore")

    checkpoint: Path | None = Field(
        default=None,
        description="Model checkpoint (.safetensors written by model.save_checkpoint); `make serve` passes "
        "artifacts/demo.safetensors.",
    )
    data_dir: Path = Field(
        default=Path("./data"),
        description="Folder of the SQLite gallery (gallery.sqlite3), index snapshots and ONNX cache.",
    )
    gallery_backend: str = Field(
        default="local",
        pattern=r"^(local|milvus)$",
        description="Where the gallery lives: local (SQLite + in-process FAISS) or milvus (shared by replicas).",
    )
    milvus_uri: str = Field(
        default="",
        description="Milvus: a local *.db file (Milvus Lite, embedded) or http://host:19530; "
        "empty means <data_dir>/milvus.db.",
    )
    milvus_token: str | None = Field(default=None, description="Milvus token (user:password or API key).")
    milvus_collection_prefix: str = Field(
        default="reid",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,200}$",
        description="Milvus collections used: <prefix>_items and <prefix>_catalog.",
    )
    # FLAT: exact, and on Milvus Lite faster than its HNSW at 10k items (docs/performance.md, "Gallery backends");
    # Milvus standalone with large galleries should use HNSW (the compose profile scale does).
    milvus_index: str = Field(
        default="FLAT",
        pattern=r"^(FLAT|HNSW|AUTOINDEX)$",
        description="Milvus index type: FLAT (exact), HNSW (M, efConstruction and ef from the REID_HNSW_* settings) "
        "or AUTOINDEX.",
    )
    milvus_timeout_s: float = Field(
        default=5.0, gt=0.0, le=600.0, description="Bound on every Milvus call; past it the request answers 503."
    )
    milvus_connect_timeout_s: float = Field(
        default=60.0, ge=0.0, description="How long start-up waits for Milvus to answer."
    )
    device: str = Field(
        default="auto", description="auto (the first CUDA device when there is one, else the CPU), cpu, cuda or cuda:N."
    )
    runtime: str = Field(
        default="auto",
        description="auto: onnxruntime on the CPU where the architecture exports (else torch, with one warning "
        "saying why), torch on CUDA; torch; or onnxruntime (start-up fails if it cannot serve). /info says which "
        "runtime serves and why.",
    )
    onnx_cache_dir: Path | None = Field(
        default=None,
        description="Folder of exported ONNX graphs, named by the checkpoint's sha256 (default: "
        "REID_DATA_DIR/onnx); exported at the first start, loaded by later ones.",
    )
    max_batch_size: int = Field(default=32, ge=1, le=4096, description="Largest inference batch (crops).")
    max_delay_ms: float = Field(
        default=5.0, ge=0.0, le=10_000.0, description="How long the batcher waits to fill a batch."
    )
    max_queue: int = Field(
        default=1024, ge=1, description="Crops allowed to wait for inference before 503 overloaded with Retry-After."
    )
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, ge=1, description="Whole request body limit.")
    max_file_bytes: int = Field(default=8 * 1024 * 1024, ge=1, description="Limit per uploaded file.")
    max_files: int = Field(default=64, ge=1, description="Files allowed in one request.")
    max_image_pixels: int = Field(default=40_000_000, ge=1, description="Width x height limit per image.")
    max_image_side: int = Field(default=16_384, ge=1, description="Limit on the longer image side (px).")
    min_image_side: int = Field(default=4, ge=1, description="Limit on the shorter image side (px).")
    api_key: str | None = Field(
        default=None,
        description="When set, every route but health and docs requires X-API-Key (or Authorization: Bearer).",
    )
    threshold: float | None = Field(
        default=None,
        ge=-1.0,
        le=1.0,
        description="Match threshold; overrides the checkpoint's calibrated one (/info: threshold_source setting).",
    )
    default_threshold: float = Field(
        default=0.5,
        ge=-1.0,
        le=1.0,
        description="Threshold used when the checkpoint carries none (threshold_source default, warned about "
        "at start: run reid-calibrate).",
    )
    hnsw_min_size: int = Field(
        default=50_000, ge=1, description="Collection size from which the index switches to HNSW."
    )
    # M=16 / efConstruction=100 build ~2x faster than 32/200 with recall@10 >= 0.997 at efSearch >= 64 on
    # 100k vectors (benchmarks/index_scale.py, docs/performance.md); builds run in the background and are snapshotted.
    hnsw_m: int = Field(default=16, ge=4, description="HNSW graph degree.")
    hnsw_ef_construction: int = Field(default=100, ge=8, description="HNSW build-time search depth.")
    hnsw_ef_search: int = Field(default=128, ge=8, description="HNSW query-time search depth.")
    store_crops: bool = Field(
        default=True,
        description="Keep each registered crop as uploaded (GET /gallery/{id}/image, reid-reindex).",
    )
    index_snapshots: bool = Field(
        default=True,
        description="Save built indexes under REID_DATA_DIR/indexes so a restart loads them instead of rebuilding.",
    )
    max_search_batch: int = Field(
        default=256,
        ge=1,
        description="Query rows searched in one gallery call: the search thread serves the queued POST /query "
        "searches of a collection together, in arrival order.",
    )
    decode_workers: int = Field(default=4, ge=1, description="Threads decoding and resizing uploads.")
    warmup_batches: int = Field(default=2, ge=0, description="Dummy batches run before /readyz turns 200.")
    retry_after_s: int = Field(default=1, ge=0, description="Retry-After sent with 503 overloaded.")
    log_level: str = Field(
        default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$", description="Log level of the service."
    )
    torch_threads: int | None = Field(
        default=None, ge=1, description="Intra-op threads of the inference runtime, torch or onnxruntime (CPU)."
    )

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if not _DEVICE_PATTERN.match(value):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {value!r}")
        return value

    @field_validator("runtime")
    @classmethod
    def _check_runtime(cls, value: str) -> str:
        value = value.strip().lower()
        if not _RUNTIME_PATTERN.match(value):
            raise ValueError(f"runtime must be auto, torch or onnxruntime, got {value!r}")
        return value

    @field_validator("api_key", "milvus_token")
    @classmethod
    def _empty_key_means_none(cls, value: str | None) -> str | None:
        # An empty REID_API_KEY= in a compose file must not lock everyone out with an unguessable "".
        return value or None

    @property
    def milvus_location(self) -> str:
        """REID_MILVUS_URI, or the embedded Milvus Lite file in the data folder when unset."""
        return self.milvus_uri or str(self.data_dir / "milvus.db")

    @property
    def onnx_cache_path(self) -> Path:
        """Where exported ONNX graphs are cached."""
        return self.onnx_cache_dir if self.onnx_cache_dir is not None else self.data_dir / "onnx"

    @property
    def database_path(self) -> Path:
        """The SQLite file holding the gallery."""
        return self.data_dir / "gallery.sqlite3"

"""Build the gallery backend named by REID_GALLERY_BACKEND.

gallery = open_gallery(settings, embedding_dim=512, fingerprint=sha, use_gpu=False, observer=metrics)
"""

from __future__ import annotations

import dataclasses
import logging
import threading

from service.core.settings import Settings
from service.gallery.base import Gallery, GalleryObserver
from service.gallery.local.backend import LocalGallery
from service.gallery.local.index import IndexConfig
from service.gallery.milvus.backend import MilvusConfig, MilvusGallery

logger = logging.getLogger(__name__)


def index_config(settings: Settings, use_gpu: bool, gpu_device: int = 0) -> IndexConfig:
    """The FAISS knobs of the local backend, from the settings (GPU ``gpu_device``: REID_DEVICE's cuda:N)."""
    return IndexConfig(
        hnsw_min_size=settings.hnsw_min_size,
        hnsw_m=settings.hnsw_m,
        hnsw_ef_construction=settings.hnsw_ef_construction,
        hnsw_ef_search=settings.hnsw_ef_search,
        use_gpu=use_gpu,
        gpu_device=gpu_device,
    )


def milvus_config(settings: Settings) -> MilvusConfig:
    """Where Milvus is and how to talk to it, from the settings."""
    return MilvusConfig(
        uri=settings.milvus_location,
        token=settings.milvus_token,
        prefix=settings.milvus_collection_prefix,
        index_type=settings.milvus_index,
        hnsw_m=settings.hnsw_m,
        hnsw_ef_construction=settings.hnsw_ef_construction,
        hnsw_ef_search=settings.hnsw_ef_search,
        timeout_s=settings.milvus_timeout_s,
        connect_timeout_s=settings.milvus_connect_timeout_s,
        max_staleness_ms=settings.milvus_max_staleness_ms,
    )


def open_gallery(
    settings: Settings,
    embedding_dim: int,
    fingerprint: str,
    use_gpu: bool = False,
    observer: GalleryObserver | None = None,
    gpu_device: int = 0,
    wait: bool = True,
    stop: threading.Event | None = None,
) -> Gallery:
    """Open the configured backend (blocking: run it in a thread); it is ready to serve when this returns.

    milvus: ``wait=False`` tries to connect once (MilvusUnreachableError when Milvus does not answer);
    ``wait=True`` keeps trying for REID_MILVUS_CONNECT_TIMEOUT_S or until ``stop`` is set."""
    backend = settings.gallery_backend
    if backend == "local":
        return LocalGallery.open(
            settings.database_path,
            embedding_dim,
            fingerprint,
            index_config(settings, use_gpu, gpu_device),
            observer,
            store_crops=settings.store_crops,
            snapshots=settings.index_snapshots,
        )
    if backend == "milvus":
        config = milvus_config(settings)
        if not wait:
            config = dataclasses.replace(config, connect_timeout_s=0.0)
        return MilvusGallery.open(config, embedding_dim, fingerprint, observer, stop=stop)
    raise ValueError(f"unknown gallery backend {backend!r}; valid: local, milvus")

"""The FastAPI application: ``create_app(settings)`` for tests and embedding, ``app`` for uvicorn.

    REID_CHECKPOINT=artifacts/demo.safetensors uvicorn service.app:app --port 8000

Nothing heavy happens at import: the model, the store, the indexes and the batcher are built in the lifespan
(settings are read from the environment there when none were given) and kept on ``app.state.reid``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from fastapi import FastAPI
from PIL import Image

from model.checkpoint import file_sha256
from service.core.errors import install_error_handlers
from service.core.metrics import RequestMetricsMiddleware, ServiceMetrics
from service.core.settings import Settings
from service.core.version import VERSION
from service.gallery.batched_search import BatchedSearch
from service.gallery.factory import open_gallery
from service.gallery.local.store import FingerprintMismatchError
from service.http.deps import ServiceState, ThresholdPolicy
from service.http.docs import install_docs
from service.http.routes import api_router, health_router
from service.http.upload_limit import UploadLimitMiddleware
from service.inference.batching import DynamicBatcher
from service.inference.embedder import Embedder
from service.inference.imaging import ImageLimits

logger = logging.getLogger(__name__)

_DESCRIPTION = """
Player re-identification for broadcast football. Register player crops into a collection (one gallery per
match, action or camera set) with `POST /gallery`, then ask who a crop is with `POST /query`: ranked matches
with cosine scores, candidates grouped by player, and `match: null` when nobody is close enough.

Every error answers `{"error": code, "detail": message}`. When the server runs with `REID_API_KEY`, send it
in the `X-API-Key` header (or as `Authorization: Bearer <key>`) on every route except `/healthz`, `/readyz` and
the docs.
"""


def threshold_policy(
    settings: Settings, checkpoint_threshold: float | None, by_size: dict[str, float] | None = None
) -> ThresholdPolicy:
    """REID_THRESHOLD (``setting``) wins over the checkpoint's calibrated values (``calibrated``), which win over
    REID_DEFAULT_THRESHOLD (``default``). The checkpoint's per-size thresholds apply only with its own calibration
    (a setting serves every size)."""
    if settings.threshold is not None:
        return ThresholdPolicy(settings.threshold, "setting", checkpoint_threshold)
    if checkpoint_threshold is not None:
        return ThresholdPolicy(float(checkpoint_threshold), "calibrated", checkpoint_threshold, dict(by_size or {}))
    if by_size:
        return ThresholdPolicy(settings.default_threshold, "calibrated", None, dict(by_size))
    return ThresholdPolicy(settings.default_threshold, "default", None)


def warn_if_uncalibrated(checkpoint: Path, policy: ThresholdPolicy) -> None:
    """A checkpoint without a calibrated threshold (e.g. imported torchreid weights) answers with a guess."""
    if policy.checkpoint_value is not None:
        return
    in_use = "REID_THRESHOLD" if policy.source == "setting" else "the built-in REID_DEFAULT_THRESHOLD"
    logger.warning(
        "%s carries no calibrated threshold: `match` uses %s = %.3f, which may name a wrong person for "
        "people who were never registered; calibrate it with `reid-calibrate %s --data-format ... "
        "--data-root ... --out NEW.safetensors`",
        checkpoint.name,
        in_use,
        policy.value,
        checkpoint.name,
    )


async def _build_state(settings: Settings, metrics: ServiceMetrics) -> ServiceState:
    if settings.checkpoint is None:
        raise RuntimeError("REID_CHECKPOINT is not set: point it at a .safetensors checkpoint")
    checkpoint = Path(settings.checkpoint)
    if not checkpoint.is_file():
        raise RuntimeError(f"REID_CHECKPOINT={checkpoint} does not exist")
    # Pillow's own bomb guard (process-wide) follows the configured limit; decode_crop also checks explicitly.
    Image.MAX_IMAGE_PIXELS = settings.max_image_pixels
    if settings.torch_threads is not None:
        torch.set_num_threads(settings.torch_threads)

    fingerprint = await asyncio.to_thread(file_sha256, checkpoint)
    embedder = await asyncio.to_thread(
        Embedder.from_checkpoint,
        checkpoint,
        settings.device,
        settings.runtime,
        fingerprint=fingerprint,
        cache_dir=settings.onnx_cache_path,
        threads=settings.torch_threads,
    )
    on_gpu = embedder.device.type == "cuda"
    # FAISS follows REID_DEVICE: cuda:N puts the GPU indexes on device N (plain "cuda" is torch's current one).
    gpu_device = (
        (embedder.device.index if embedder.device.index is not None else torch.cuda.current_device()) if on_gpu else 0
    )
    try:
        gallery = await asyncio.to_thread(
            open_gallery, settings, embedder.embedding_dim, fingerprint, on_gpu, metrics, gpu_device
        )
    except FingerprintMismatchError as exc:
        logger.critical("refusing to start: %s", exc)
        raise

    policy = threshold_policy(settings, embedder.spec.threshold, embedder.spec.thresholds)
    warn_if_uncalibrated(checkpoint, policy)
    warmup_sizes = sorted({1, settings.max_batch_size})[: settings.warmup_batches]
    await asyncio.to_thread(embedder.warm_up, warmup_sizes)
    batcher = DynamicBatcher(
        embedder.embed_batch,
        max_batch_size=settings.max_batch_size,
        max_delay_s=settings.max_delay_ms / 1000,
        max_queue=settings.max_queue,
        retry_after_s=settings.retry_after_s,
        observer=metrics,
    )
    batcher.start()
    searcher = BatchedSearch(gallery.search, max_queries=settings.max_search_batch)
    searcher.start()
    return ServiceState(
        settings=settings,
        embedder=embedder,
        batcher=batcher,
        gallery=gallery,
        metrics=metrics,
        decode_pool=ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="reid-decode"),
        searcher=searcher,
        threshold=policy,
        image_limits=ImageLimits(
            max_file_bytes=settings.max_file_bytes,
            max_pixels=settings.max_image_pixels,
            max_side=settings.max_image_side,
            min_side=settings.min_image_side,
        ),
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings or Settings()
    app.state.settings = settings
    if not logging.getLogger().handlers:
        # Plain `uvicorn service.app:app` configures only its own loggers; give ours a handler too.
        logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    previous_pixel_limit = Image.MAX_IMAGE_PIXELS
    state = await _build_state(settings, app.state.metrics)
    app.state.reid = state
    state.ready = True
    logger.info(
        "ready: %s on %s with %s, threshold %.3f (%s)",
        state.embedder.spec.architecture,
        state.embedder.device,
        state.embedder.runtime.name,
        state.threshold.value,
        state.threshold.source,
    )
    try:
        yield
    finally:
        state.ready = False
        # uvicorn has already waited for the in-flight requests; an ASGI server that does not (or uvicorn past
        # --timeout-graceful-shutdown) leaves crops queued: drain them, then let their requests finish with the
        # gallery still open (tests/reliability/test_reliability_shutdown.py).
        await asyncio.to_thread(state.batcher.stop, 30.0, drain=True)
        if not await app.state.metrics.wait_idle(30.0):
            logger.warning("requests still in flight after 30 s; closing the gallery under them")
        await asyncio.to_thread(state.searcher.stop, 30.0)
        state.decode_pool.shutdown(wait=True)
        await asyncio.to_thread(state.gallery.close)
        app.state.reid = None
        # Pillow's limit is process-wide: give it back for whoever else decodes images in this process.
        Image.MAX_IMAGE_PIXELS = previous_pixel_limit
        logger.info("stopped")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; with settings=None they are read from REID_* environment variables at start-up."""
    app = FastAPI(
        title="SoccerNet player re-identification",
        version=VERSION,
        description=_DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served by install_docs with local assets instead of a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.reid = None
    metrics = ServiceMetrics()
    app.state.metrics = metrics
    install_error_handlers(app)
    app.include_router(health_router)
    app.include_router(api_router)
    install_docs(app)
    default_limit = Settings.model_fields["max_upload_bytes"].default

    def upload_limit() -> int:
        current: Settings | None = app.state.settings
        return current.max_upload_bytes if current is not None else int(default_limit)

    # Added last = outermost: latency is measured around the upload limit so its 413s are counted too.
    app.add_middleware(UploadLimitMiddleware, limit=upload_limit)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    return app


app = create_app()

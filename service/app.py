"""The FastAPI application: ``create_app(settings)`` for tests and embedding, ``app`` for uvicorn.

    REID_CHECKPOINT=checkpoints/default.onnx uvicorn service.app:app --port 8000

Nothing heavy happens at import: the model, the store, the indexes and the batcher are built in the lifespan
(settings are read from the environment there when none were given) and kept on ``app.state.reid``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from PIL import Image

from model.commands import command
from service.core.errors import install_error_handlers
from service.core.metrics import RequestMetricsMiddleware, ServiceMetrics
from service.core.settings import Settings
from service.core.version import VERSION
from service.gallery.base import Gallery
from service.gallery.batched_search import BatchedSearch
from service.gallery.factory import open_gallery
from service.gallery.local.store import StoreError
from service.gallery.milvus.backend import MilvusUnreachableError, ModelMismatchError
from service.http.deps import ServiceState, ThresholdPolicy, ThresholdSource
from service.http.docs import install_docs
from service.http.pages import install_ui
from service.http.routes import api_router, health_router
from service.http.security import ConfiguredCorsMiddleware, SecurityHeadersMiddleware
from service.http.upload_limit import UploadLimitMiddleware
from service.inference.batching import DynamicBatcher
from service.inference.embedder import Embedder
from service.inference.imaging import ImageLimits
from service.inference.runtime import ServingSetupError

logger = logging.getLogger(__name__)

_DESCRIPTION = """
Player re-identification for broadcast football. Register player crops into a collection (one gallery per
match, action or camera set) with `POST /gallery`, then ask who a crop is with `POST /query`: ranked matches
with cosine scores, candidates grouped by player, and `match: null` when nobody is close enough.

Every error answers `{"error": code, "detail": message}`. When the server runs with `REID_API_KEY`, send it
in the `X-API-Key` header (or as `Authorization: Bearer <key>`) on every route except `/healthz`, `/readyz` and
the docs.
The same features for people, in the browser: [/ui](/ui).
"""


def threshold_policy(
    settings: Settings,
    checkpoint_threshold: float | None,
    by_size: dict[str, float] | None = None,
    card: dict[str, Any] | None = None,
) -> ThresholdPolicy:
    """REID_THRESHOLD (``setting``) wins over the checkpoint's values, which win over REID_DEFAULT_THRESHOLD
    (``default``). The checkpoint's are ``calibrated`` when a calibration card records how (``card``, see
    CheckpointSpec.calibration_card), else ``checkpoint``. Its per-size thresholds apply only with its own
    values (a setting serves every size)."""
    if settings.threshold is not None:
        return ThresholdPolicy(settings.threshold, "setting", checkpoint_threshold)
    source: ThresholdSource = "calibrated" if card else "checkpoint"
    if checkpoint_threshold is not None:
        return ThresholdPolicy(float(checkpoint_threshold), source, checkpoint_threshold, dict(by_size or {}))
    if by_size:
        return ThresholdPolicy(settings.default_threshold, source, None, dict(by_size))
    return ThresholdPolicy(settings.default_threshold, "default", None)


def warn_if_uncalibrated(checkpoint: Path, policy: ThresholdPolicy) -> None:
    """A checkpoint without a calibrated threshold (e.g. imported torchreid weights) answers with a guess."""
    if policy.checkpoint_value is not None:
        return
    in_use = "REID_THRESHOLD" if policy.source == "setting" else "the built-in REID_DEFAULT_THRESHOLD"
    logger.warning(
        "%s carries no calibrated threshold: `match` uses %s = %.3f, which may name a wrong person for "
        "people who were never registered; calibrate it on labelled crops of your own (the full install): "
        "`%s %s --data-format cuhk03 --data-root YOUR_CROPS --out %s` (formats: %s --help)",
        checkpoint.name,
        in_use,
        policy.value,
        command("reid-calibrate"),
        checkpoint,
        checkpoint.with_name(checkpoint.stem + "_calibrated.safetensors"),
        command("reid-calibrate"),
    )


@dataclass
class _Startup:
    """Where start-up stands, for /healthz and /readyz while the gallery is not open yet."""

    waiting: str = ""  # what the replica waits for (answered by /readyz as 503)
    failed: str = ""  # why it gave up (answered by /healthz and /readyz as 503)


async def _load_model(settings: Settings) -> tuple[Embedder, str, ThresholdPolicy]:
    """Checkpoint -> warmed-up embedder, its fingerprint and the threshold policy."""
    if settings.checkpoint is None:
        raise ServingSetupError("REID_CHECKPOINT is not set: point it at a .safetensors checkpoint or its .onnx graph")
    checkpoint = Path(settings.checkpoint)
    # Pillow's own bomb guard (process-wide) follows the configured limit; decode_crop also checks explicitly.
    Image.MAX_IMAGE_PIXELS = settings.max_image_pixels

    embedder = await asyncio.to_thread(
        Embedder.from_checkpoint,
        checkpoint,
        settings.device,
        settings.runtime,
        cache_dir=settings.onnx_cache_path,
        threads=settings.torch_threads,
    )
    if settings.torch_threads is not None and embedder.runtime.name == "torch":
        import torch

        torch.set_num_threads(settings.torch_threads)
    spec = embedder.spec
    policy = threshold_policy(settings, spec.threshold, spec.thresholds, spec.calibration_card())
    warn_if_uncalibrated(checkpoint, policy)
    warmup_sizes = sorted({1, settings.max_batch_size})[: settings.warmup_batches]
    await asyncio.to_thread(embedder.warm_up, warmup_sizes)
    return embedder, embedder.fingerprint, policy


async def _open(
    settings: Settings,
    embedder: Embedder,
    fingerprint: str,
    metrics: ServiceMetrics,
    wait: bool,
    stop: threading.Event,
) -> Gallery:
    on_gpu = embedder.device.type == "cuda"
    # FAISS follows REID_DEVICE: cuda:N puts the GPU indexes on device N (resolved with an index at start-up).
    gpu_device = (embedder.device.index or 0) if on_gpu else 0
    try:
        return await asyncio.to_thread(
            open_gallery, settings, embedder.embedding_dim, fingerprint, on_gpu, metrics, gpu_device, wait, stop
        )
    except (StoreError, ModelMismatchError) as exc:
        # The message names the fix; reid-serve drops the traceback uvicorn would print after it.
        logger.critical("refusing to start: %s", exc)
        raise


def _state(
    settings: Settings, embedder: Embedder, gallery: Gallery, metrics: ServiceMetrics, policy: ThresholdPolicy
) -> ServiceState:
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


def _go_ready(app: FastAPI, state: ServiceState) -> None:
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


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Model first; then the gallery. When Milvus does not answer the first try, the app starts serving at once
    (/healthz 200, /readyz and the API 503) and opens the gallery in the background, so SIGTERM is honoured at any
    moment of the wait; a model mismatch found there marks the replica failed (/healthz 503)."""
    settings: Settings = app.state.settings or Settings()
    app.state.settings = settings
    if not logging.getLogger().handlers:
        # Plain `uvicorn service.app:app` configures only its own loggers; give ours a handler too.
        logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    previous_pixel_limit = Image.MAX_IMAGE_PIXELS
    startup = _Startup(waiting="loading the model")
    app.state.startup = startup
    metrics: ServiceMetrics = app.state.metrics
    try:
        embedder, fingerprint, policy = await _load_model(settings)
    except ServingSetupError as exc:
        logger.critical("refusing to start: %s", exc)
        raise
    stop = threading.Event()
    opener: asyncio.Task[None] | None = None
    try:
        gallery = await _open(settings, embedder, fingerprint, metrics, wait=False, stop=stop)
    except MilvusUnreachableError as exc:
        startup.waiting = f"waiting for Milvus at {settings.milvus_location.split('@')[-1]}: {exc}"
        logger.warning("%s; serving /healthz (and /readyz 503) while retrying", startup.waiting)

        async def open_later() -> None:
            try:
                gallery = await _open(settings, embedder, fingerprint, metrics, wait=True, stop=stop)
            except Exception as exc:
                if not stop.is_set():
                    startup.failed = f"start-up failed: {exc}"
                    logger.critical("%s", startup.failed)
                return
            if stop.is_set():
                await asyncio.to_thread(gallery.close)
                return
            startup.waiting = ""
            _go_ready(app, _state(settings, embedder, gallery, metrics, policy))

        opener = asyncio.create_task(open_later())
    else:
        startup.waiting = ""
        _go_ready(app, _state(settings, embedder, gallery, metrics, policy))
    try:
        yield
    finally:
        stop.set()
        if opener is not None:
            await opener  # ends within one connect attempt (REID_MILVUS_TIMEOUT_S) of the stop
        state: ServiceState | None = app.state.reid
        if state is not None:
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
    app.state.startup = _Startup(waiting="starting")
    metrics = ServiceMetrics()
    app.state.metrics = metrics
    install_error_handlers(app)
    app.include_router(health_router)
    app.include_router(api_router)
    install_docs(app)
    install_ui(app)
    default_limit = Settings.model_fields["max_upload_bytes"].default

    def upload_limit() -> int:
        current: Settings | None = app.state.settings
        return current.max_upload_bytes if current is not None else int(default_limit)

    def cors_origins() -> tuple[str, ...]:
        current: Settings | None = app.state.settings
        return current.cors_origins if current is not None else ()

    # Added last = outermost: latency is measured around the upload limit so its 413s are counted too, and the
    # security headers go on every answer, CORS preflights and 413s included.
    app.add_middleware(UploadLimitMiddleware, limit=upload_limit)
    app.add_middleware(ConfiguredCorsMiddleware, origins=cors_origins)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    app.add_middleware(SecurityHeadersMiddleware)
    return app


app = create_app()

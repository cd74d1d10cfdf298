"""``reid-reindex``: re-embed a whole gallery with another model, from the crops it keeps.

    reid-reindex --checkpoint artifacts/osnet_x0_25.safetensors --data-dir /var/lib/reid

Stop the service first. Every stored crop is decoded exactly as at registration and embedded with the new
checkpoint; new embeddings are committed to a side table batch by batch, so a crash or Ctrl-C loses at most
one batch and running the same command again resumes where it stopped. At the end one SQLite transaction
swaps every embedding and records the new model's fingerprint: until then the gallery still belongs to the old
model (and serves with it), afterwards only to the new one. Old index snapshots are removed (the next start
rebuilds the indexes from the new embeddings). Exit status: 0 done, 1 cannot reindex, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from service.core.errors import ImageError
from service.core.faults import pause_point
from service.core.settings import Settings
from service.gallery.local.snapshots import SUFFIX
from service.gallery.local.store import GalleryInUseError, GalleryLock, GalleryStore
from service.inference.embedder import Embedder
from service.inference.imaging import ImageLimits, decode_crop
from service.inference.runtime import locate_model, torch_installed

logger = logging.getLogger(__name__)


class ReindexError(RuntimeError):
    """The gallery cannot be re-embedded (no database, crops not kept, ...); the message says why."""


@dataclass(frozen=True)
class ReindexResult:
    items: int
    resumed_from: int
    fingerprint: str
    embedding_dim: int


def _limits() -> ImageLimits:
    defaults = Settings.model_fields
    return ImageLimits(
        max_file_bytes=int(defaults["max_file_bytes"].default),
        max_pixels=int(defaults["max_image_pixels"].default),
        max_side=int(defaults["max_image_side"].default),
        min_side=1,
    )


def reindex(
    data_dir: Path, checkpoint: Path, device: str = "auto", batch_size: int = 32, progress: bool = True
) -> ReindexResult:
    """Re-embed every item of ``data_dir``'s gallery with ``checkpoint`` and switch the gallery to it."""
    database = Settings(data_dir=data_dir).database_path
    if not database.is_file():
        raise ReindexError(f"no gallery at {database}")
    if not checkpoint.is_file():
        raise ReindexError(f"checkpoint {checkpoint} does not exist")
    try:
        lock = GalleryLock(database)
    except GalleryInUseError as exc:
        raise ReindexError(str(exc)) from exc
    try:
        return _reindex(database, checkpoint, device, batch_size, progress)
    finally:
        lock.release()


def _reindex(database: Path, checkpoint: Path, device: str, batch_size: int, progress: bool) -> ReindexResult:
    # A graph beside the checkpoint (or the .onnx given) embeds without torch; otherwise torch, where installed,
    # rather than exporting a graph only for this batch job. REID_RUNTIME set explicitly wins.
    settings = Settings()
    runtime = settings.runtime
    if runtime == "auto" and locate_model(checkpoint).graph is None and torch_installed():
        runtime = "torch"
    embedder = Embedder.from_checkpoint(checkpoint, device, runtime, cache_dir=settings.onnx_cache_path)
    fingerprint = embedder.fingerprint
    store = GalleryStore(database, embedder.embedding_dim, check_meta=False)
    try:
        if store.meta().get("model_fingerprint") == fingerprint:
            logger.info("the gallery already belongs to model %s: nothing to do", fingerprint)
            return ReindexResult(0, 0, fingerprint, embedder.embedding_dim)
        missing = store.items_without_crop()
        if missing:
            raise ReindexError(
                f"{missing} items were registered without keeping their crop (REID_STORE_CROPS off): they cannot "
                "be re-embedded; delete them or register them again, then rerun"
            )
        done, total = store.begin_reindex(fingerprint, embedder.embedding_dim)
        if done:
            logger.info("resuming: %d of %d items already re-embedded with the new model", done, total)
        limits = _limits()
        with tqdm(total=total, initial=done, unit="crop", desc="reindex", disable=not progress) as bar:
            while True:
                batch = store.crops_to_reindex(batch_size)
                if not batch:
                    # Items registered meanwhile (the service should be stopped) get embedded before the switch.
                    if store.finish_reindex(fingerprint, embedder.embedding_dim):
                        break
                    continue
                pixels = []
                for i, (faiss_id, data) in enumerate(batch):
                    try:
                        pixels.append(decode_crop(data, i, f"item {faiss_id}", embedder.input_size, limits).pixels)
                    except ImageError as exc:
                        raise ReindexError(f"stored crop of item {faiss_id} cannot be decoded: {exc.detail}") from exc
                embeddings = embedder.embed_batch(np.stack(pixels))
                store.save_reindexed([faiss_id for faiss_id, _ in batch], embeddings)
                bar.update(len(batch))
                pause_point("reindex_batch")
    finally:
        store.close()
    snapshots = database.parent / "indexes"
    if snapshots.is_dir():
        for path in snapshots.glob(f"*{SUFFIX}"):
            path.unlink()
    logger.info("gallery %s now belongs to model %s (%d items re-embedded)", database, fingerprint, total)
    return ReindexResult(total, done, fingerprint, embedder.embedding_dim)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reid-reindex", description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument(
        "--checkpoint", type=Path, required=True, help="the new model (.safetensors, or the .onnx graph beside it)"
    )
    parser.add_argument("--data-dir", type=Path, required=True, help="the gallery's REID_DATA_DIR")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--batch-size", type=int, default=32, help="crops per inference batch (default 32)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def reindex_main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result = reindex(args.data_dir, args.checkpoint, args.device, args.batch_size, not args.no_progress)
    except ReindexError as exc:
        print(f"reid-reindex: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("reid-reindex: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    print(f"reid-reindex: {result.items} items now embedded with model {result.fingerprint}")
    return 0


if __name__ == "__main__":
    sys.exit(reindex_main())

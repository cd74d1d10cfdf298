"""Fetch a model of the zoo: download, check the hash, convert strictly, write a checkpoint with its provenance.

    result = fetch_model("osnet_x0_25_msmt17")                 # -> <cache>/models/osnet_x0_25_msmt17.safetensors
    result = fetch_model("osnet_x1_0_market1501", out=Path("artifacts/osnet.safetensors"))

The upstream file is kept under ``<cache>/downloads`` (a half-downloaded one as ``.part``, resumed by the next
run) and converted through model/torchreid_import.py, which loads it with weights_only=True and fails on any
unused, missing or mis-shaped tensor. The checkpoint is written by save_checkpoint (temp file + rename), so its
path never holds half a file. Its ``provenance`` (shown by GET /info) records the entry's facts plus what this
fetch observed: the URL actually used, the sha256, the size and when.

Environment: SOCCERNET_REID_CACHE overrides the cache folder (default: the user cache folder from platformdirs,
e.g. ~/.cache/soccernet-reid, which honours XDG_CACHE_HOME); SOCCERNET_REID_MIRROR=<base URL> downloads
``<base URL>/<upstream file name>`` instead of the upstream URLs (an internal mirror, or tests).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import platformdirs
import torch

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, the rest works
    fcntl = None  # type: ignore[assignment]

from model.checkpoint import CheckpointError, file_sha256, load_checkpoint, read_checkpoint_spec, save_checkpoint
from model.commands import command
from model.torchreid_import import import_torchreid, load_torchreid_state_dict
from training.zoo.download import ChunkHook, DownloadError, Unreachable, download_first
from training.zoo.registry import ZooEntry, get_entry

logger = logging.getLogger(__name__)

CACHE_ENV = "SOCCERNET_REID_CACHE"
MIRROR_ENV = "SOCCERNET_REID_MIRROR"
APP_NAME = "soccernet-reid"


class FetchError(RuntimeError):
    """A fetch failed; the message is meant for the user as is (what failed, and what to do)."""


@dataclass(frozen=True)
class FetchResult:
    checkpoint: Path
    provenance: dict[str, Any]
    downloaded: bool  # False when a cached checkpoint or download was reused


def cache_dir() -> Path:
    """The cache folder: $SOCCERNET_REID_CACHE, else the platform's user cache folder for this project."""
    override = os.environ.get(CACHE_ENV)
    return Path(override).expanduser() if override else platformdirs.user_cache_path(APP_NAME)


def source_urls(entry: ZooEntry) -> tuple[str, ...]:
    """Where to download ``entry`` from: the mirror named by $SOCCERNET_REID_MIRROR, else the upstream URLs."""
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        return (f"{mirror.rstrip('/')}/{entry.file_name}",)
    return entry.urls


def offline_help(entry: ZooEntry, urls: tuple[str, ...], reason: str) -> str:
    """What to tell a user whose machine cannot reach the source: the URL, and the manual path."""
    pinned = f"\n  expected sha256: {entry.sha256}" if entry.sha256 else ""
    return (
        f"cannot download {entry.name}: {reason}\n"
        f"Without internet here, download it on another machine from\n  {urls[0]}\n"
        + "".join(f"  or {url}\n" for url in urls[1:])
        + f"(torchreid model zoo: {entry.source_page}; file {entry.file_name}){pinned}\n"
        + f"copy it here, then convert it and serve it:\n"
        f"  {command('reid-import-torchreid')} --arch {entry.architecture} {entry.file_name} "
        f"artifacts/{entry.name}.safetensors\n"
        f"  make serve CHECKPOINT=artifacts/{entry.name}.safetensors"
    )


def _cached(checkpoint: Path, entry: ZooEntry) -> dict[str, Any] | None:
    """The provenance of an existing checkpoint of ``entry`` at ``checkpoint`` (same name and hash), else None."""
    if not checkpoint.is_file():
        return None
    try:
        provenance = read_checkpoint_spec(checkpoint).provenance
    except CheckpointError:
        return None
    if provenance.get("name") != entry.name:
        return None
    if entry.sha256 is not None and provenance.get("sha256") != entry.sha256:
        return None
    return provenance


def fetch_model(
    name: str,
    out: Path | None = None,
    *,
    cache: Path | None = None,
    force: bool = False,
    retries: int = 4,
    timeout_s: float = 30.0,
    backoff_s: float = 1.0,
    progress: bool = True,
    on_chunk: ChunkHook | None = None,
) -> FetchResult:
    """Make sure a checkpoint of zoo entry ``name`` exists at ``out`` (default: in the cache) and return it.

    Reuses a checkpoint already there (same entry and hash) unless ``force``. Raises KeyError for an unknown
    name and FetchError (with a message for the user) for anything that goes wrong; nothing is written then.
    """
    entry = get_entry(name)
    cache = cache or cache_dir()
    checkpoint = out or cache / "models" / f"{entry.name}.safetensors"
    if checkpoint.suffix != ".safetensors":
        raise FetchError(f"the checkpoint must end in .safetensors, got {checkpoint}")
    if not force and (provenance := _cached(checkpoint, entry)) is not None:
        logger.info("%s is already at %s", entry.name, checkpoint)
        return FetchResult(checkpoint, provenance, downloaded=False)

    lock = cache / "downloads" / f"{entry.file_name}.lock"
    with _exclusive(lock, entry.name):
        return _download_and_convert(
            entry,
            checkpoint,
            cache,
            force=force,
            retries=retries,
            timeout_s=timeout_s,
            backoff_s=backoff_s,
            progress=progress,
            on_chunk=on_chunk,
        )


@contextlib.contextmanager
def _exclusive(lock: Path, name: str) -> Iterator[None]:
    """Hold an exclusive lock on ``lock`` (two fetches of one file would interleave their bytes in the .part)."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise FetchError(
                    f"another reid-fetch is downloading {name} right now (it holds {lock}); wait for it to finish"
                ) from None
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _download_and_convert(
    entry: ZooEntry,
    checkpoint: Path,
    cache: Path,
    *,
    force: bool,
    retries: int,
    timeout_s: float,
    backoff_s: float,
    progress: bool,
    on_chunk: ChunkHook | None,
) -> FetchResult:
    """The part of fetch_model that runs under the lock: download (or reuse), convert, write the checkpoint."""
    raw = cache / "downloads" / entry.file_name
    urls = source_urls(entry)
    downloaded = False
    origin = raw.with_name(raw.name + ".url")  # which URL the cached download came from, for the provenance
    if raw.is_file() and not force:
        digest = file_sha256(raw)
        url = origin.read_text().strip() if origin.is_file() else urls[0]
        if entry.sha256 is not None and digest != entry.sha256:
            logger.warning("cached %s has sha256 %s, not the pinned one: downloading again", raw, digest)
            raw.unlink()
    if force or not raw.is_file():
        try:
            result = download_first(
                urls,
                raw,
                sha256=entry.sha256,
                retries=retries,
                timeout_s=timeout_s,
                backoff_s=backoff_s,
                progress=progress,
                on_chunk=on_chunk,
            )
        except Unreachable as exc:
            raise FetchError(offline_help(entry, urls, str(exc))) from exc
        except DownloadError as exc:
            raise FetchError(f"cannot download {entry.name}: {exc}") from exc
        digest, url, downloaded = result.sha256, result.url, True
        origin.write_text(url + "\n")

    try:
        state = load_torchreid_state_dict(raw)
        model = import_torchreid(entry.architecture, state, input_size=entry.input_size)
        if model.num_classes != entry.num_classes:
            raise ValueError(
                f"its classifier has {model.num_classes} classes, {entry.name} has {entry.num_classes}: "
                "another model's file"
            )
    except (FileNotFoundError, ValueError) as exc:
        raw.unlink(missing_ok=True)  # not worth keeping: the next run downloads it afresh
        origin.unlink(missing_ok=True)
        raise FetchError(f"{entry.file_name} (from {url}) is not usable as {entry.name}: {exc}") from exc

    provenance = {
        **entry.card(),
        "source_url": url,
        "sha256": digest,
        "sha256_pinned": entry.sha256 is not None,
        "size_bytes": raw.stat().st_size,
        "fetched_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "fetched_by": "reid-fetch",
    }
    train_meta = {
        "source": "torchreid",
        "source_file": entry.file_name,
        "source_sha256": digest,
        "source_tensors": len(state),
        "num_classes": model.num_classes,
        "dataset": entry.training_data,
    }
    save_checkpoint(model, checkpoint, train_meta=train_meta, provenance=provenance)
    reloaded, _ = load_checkpoint(checkpoint)
    # A small probe is enough to compare every weight (OSNet is fully convolutional) and keeps the check cheap.
    probe = torch.rand(2, 3, 64, 32, generator=torch.Generator().manual_seed(0))
    if not torch.allclose(model.embed(probe), reloaded.embed(probe), atol=1e-6):
        checkpoint.unlink()
        raise FetchError(f"{checkpoint} does not reproduce the imported model's embeddings; removed it")
    logger.info("%s -> %s", entry.name, checkpoint)
    return FetchResult(checkpoint, provenance, downloaded=downloaded)

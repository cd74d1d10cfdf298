"""Index snapshots on disk: a built FAISS index plus the watermark of the store state it contains.

One file per collection under ``<REID_DATA_DIR>/indexes/``. Layout: magic, the FAISS index as faiss writes it,
the tombstoned ids (int64), a JSON header, the header's length (uint64), a CRC-32 of the header (uint32) and the
magic again. The header names the collection (and its creation time, so a dropped and re-created collection never
inherits a stale file), the model fingerprint, dimension, index kind and build settings, the watermark (largest
faiss id contained and the deletion sequence number) and a CRC-32 of the payload before it; the header's own CRC
covers the header, so every byte of the file is checked, the watermark included. A file that fails any of these
checks is rejected with the reason, and the caller rebuilds: a snapshot is never trusted blindly.

Writes go to ``<name>.tmp``, are fsynced, then renamed over the previous snapshot (and the folder fsynced), so a
crash in the middle leaves the previous snapshot intact; a write that fails (a full disk) removes its .tmp.

    path = write_snapshot(folder, header, index, tombstones)
    index, header, tombstones = read_snapshot(path, expected)
"""

from __future__ import annotations

import json
import logging
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from service.core.faults import pause_point

logger = logging.getLogger(__name__)

MAGIC = b"REIDIDX\x01"
# 2: the header has its own CRC-32 in the trailer (1 had none; such files are rejected and rebuilt once).
FORMAT_VERSION = 2
_TRAILER = struct.Struct("<QI")  # header length, header CRC-32
SUFFIX = ".index"


class SnapshotRejected(Exception):
    """The snapshot cannot be used; the message says why."""


@dataclass(frozen=True)
class SnapshotHeader:
    """What a snapshot holds and what it was built from."""

    collection: str
    collection_created_at: str
    model_fingerprint: str
    dim: int
    kind: str
    settings: dict[str, int] = field(default_factory=dict)
    watermark_id: int = -1
    deletion_seq: int = 0
    ntotal: int = 0
    tombstones: int = 0
    payload_bytes: int = 0
    payload_crc32: int = 0
    format_version: int = FORMAT_VERSION


def snapshot_path(folder: Path, collection: str) -> Path:
    # Collection names match [A-Za-z0-9_.-]{1,64}; the suffix keeps "." and ".." ordinary file names.
    return folder / f"{collection}{SUFFIX}"


class _CrcWriter:
    def __init__(self, fh: Any) -> None:
        self.fh = fh
        self.crc = 0
        self.size = 0

    def __call__(self, data: bytes) -> int:
        self.fh.write(data)
        self.crc = zlib.crc32(data, self.crc)
        self.size += len(data)
        return len(data)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_snapshot(folder: Path, header: SnapshotHeader, index: Any, tombstones: set[int]) -> Path:
    """Write ``index`` (a CPU IndexIDMap2) and ``tombstones`` atomically; returns the snapshot's path."""
    folder.mkdir(parents=True, exist_ok=True)
    final = snapshot_path(folder, header.collection)
    tmp = final.with_name(final.name + ".tmp")
    try:
        _write_file(tmp, header, index, tombstones)
        os.replace(tmp, final)
    except BaseException:
        # A full disk (or anything else) midway: leave no partial file behind, the previous snapshot stays.
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(folder)
    return final


def _write_file(tmp: Path, header: SnapshotHeader, index: Any, tombstones: set[int]) -> None:
    with open(tmp, "wb") as fh:
        fh.write(MAGIC)
        writer = _CrcWriter(fh)
        faiss.write_index(index, faiss.PyCallbackIOWriter(writer))  # type: ignore[attr-defined]
        writer(np.array(sorted(tombstones), dtype="<i8").tobytes())
        fh.flush()
        pause_point("snapshot_write")
        done = SnapshotHeader(
            **{
                **asdict(header),
                "ntotal": int(index.ntotal),
                "tombstones": len(tombstones),
                "payload_bytes": writer.size,
                "payload_crc32": writer.crc,
            }
        )
        encoded = json.dumps(asdict(done), sort_keys=True).encode()
        fh.write(encoded + _TRAILER.pack(len(encoded), zlib.crc32(encoded)) + MAGIC)
        fh.flush()
        os.fsync(fh.fileno())


def read_header(path: Path) -> SnapshotHeader:
    """The header of a snapshot file; SnapshotRejected when the file is truncated or not a snapshot."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            if fh.read(len(MAGIC)) != MAGIC:
                raise SnapshotRejected("not a snapshot file (bad magic)")
            tail = len(MAGIC) + _TRAILER.size
            if size < 2 * len(MAGIC) + _TRAILER.size:
                raise SnapshotRejected("truncated file")
            fh.seek(size - tail)
            length, crc = _TRAILER.unpack(fh.read(_TRAILER.size))
            if fh.read(len(MAGIC)) != MAGIC or length > size - tail - len(MAGIC):
                raise SnapshotRejected("truncated file (no trailer), or written by an older version")
            fh.seek(size - tail - length)
            encoded = fh.read(length)
        if zlib.crc32(encoded) != crc:
            raise SnapshotRejected("header checksum mismatch (corrupt header), or written by an older version")
        return SnapshotHeader(**json.loads(encoded))
    except (OSError, ValueError, TypeError, struct.error) as exc:
        raise SnapshotRejected(f"unreadable header: {exc}") from exc


def read_snapshot(
    path: Path, expected: SnapshotHeader, settings_for: Callable[[str], dict[str, int]]
) -> tuple[Any, SnapshotHeader, set[int]]:
    """Load and check a snapshot against ``expected`` (collection, creation time, fingerprint, dim) and the
    current build settings of its kind (``settings_for(kind)``).

    Returns (CPU index, header, tombstones). Raises SnapshotRejected naming the first mismatch found.
    """
    if not path.is_file():
        raise SnapshotRejected("no snapshot")
    header = read_header(path)
    checks = [
        ("format_version", header.format_version, FORMAT_VERSION),
        ("collection", header.collection, expected.collection),
        ("collection created_at", header.collection_created_at, expected.collection_created_at),
        ("model fingerprint", header.model_fingerprint, expected.model_fingerprint),
        ("dimension", header.dim, expected.dim),
    ]
    for name, got, want in checks:
        if got != want:
            raise SnapshotRejected(f"{name} {got!r} differs from the current {want!r}")
    if header.kind not in ("flat", "hnsw"):
        raise SnapshotRejected(f"unknown index kind {header.kind!r}")
    if header.settings != settings_for(header.kind):
        raise SnapshotRejected(f"built with {header.settings}, the settings now are {settings_for(header.kind)}")
    # Checksum first (streamed), so faiss never parses a damaged file; then stream the index itself.
    with open(path, "rb") as fh:
        fh.seek(len(MAGIC))
        crc, remaining = 0, header.payload_bytes
        while remaining:
            block = fh.read(min(remaining, 1 << 24))
            if not block:
                raise SnapshotRejected("payload shorter than its header says")
            crc = zlib.crc32(block, crc)
            remaining -= len(block)
        if crc != header.payload_crc32:
            raise SnapshotRejected("checksum mismatch (corrupt file)")
        fh.seek(len(MAGIC))
        try:
            index = faiss.read_index(faiss.PyCallbackIOReader(fh.read))  # type: ignore[attr-defined]
        except RuntimeError as exc:
            raise SnapshotRejected(f"faiss cannot read the index: {exc}") from exc
        tomb_bytes = 8 * header.tombstones
        fh.seek(len(MAGIC) + header.payload_bytes - tomb_bytes)
        tombstones = set(np.frombuffer(fh.read(tomb_bytes), dtype="<i8").tolist())
    if index.ntotal != header.ntotal or index.d != header.dim:
        raise SnapshotRejected("index contents differ from the header")
    return index, header, tombstones

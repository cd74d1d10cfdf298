"""WAL growth while a background index build reads the gallery and writers carry on (local backend).

A gallery of N items (D-dim embeddings, no crops) is filled, then a background rebuild of its index runs while a
writer registers items with crops at a fixed rate. The WAL file's size is sampled throughout. Two readers are
compared side by side on the same machine: ``one_transaction`` (the build reads the whole collection inside one
SQLite read transaction, as before) and ``short_transactions`` (the store's reader now: a watermark taken at the
start, then one short read per chunk). SQLite cannot restart the WAL past a reader's snapshot, so with one long
read the WAL grows with every write for the length of the build; with short reads checkpoints keep it small.
The WAL file never shrinks by itself, so its peak size is what the disk had to hold.

    .venv/bin/python -m benchmarks.build_wal --n 100000 --dim 512 --out benchmarks/results/build_wal.json
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import base_parser, machine_info, markdown_table, setup_logging, write_results

logger = logging.getLogger(__name__)


class OneTransactionSource:
    """The previous build reader: every chunk read inside one read transaction held for the whole build."""

    def __init__(self, path: Path, chunk: int = 4096) -> None:
        self.path = path
        self.chunk = chunk

    @contextlib.contextmanager
    def read_collection(self, collection: str) -> Iterator[Any]:
        from service.gallery.local.index import SourceView

        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        try:
            conn.execute("BEGIN")
            size, watermark = conn.execute(
                "SELECT COUNT(*), COALESCE(MAX(faiss_id), -1) FROM items WHERE collection = ?", (collection,)
            ).fetchone()

            def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
                last = -1
                while True:
                    rows = conn.execute(
                        "SELECT faiss_id, embedding FROM items WHERE collection = ? AND faiss_id > ? "
                        "ORDER BY faiss_id LIMIT ?",
                        (collection, last, self.chunk),
                    ).fetchall()
                    if not rows:
                        return
                    ids = np.array([r[0] for r in rows], dtype=np.int64)
                    yield ids, np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), -1)
                    last = int(ids[-1])

            yield SourceView(int(watermark), 0, int(size), chunks())
            conn.execute("COMMIT")
        finally:
            conn.close()


def fill(database: Path, n: int, dim: int) -> None:
    """N items with (dim,) unit embeddings and no crops, written straight through the store (fast)."""
    from service.gallery import NewItem
    from service.gallery.local.store import GalleryStore

    rng = np.random.default_rng(0)
    store = GalleryStore(database, dim, "bench", store_crops=False)
    for lo in range(0, n, 5000):
        vectors = rng.standard_normal((min(5000, n - lo), dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        store.insert_items("bench", [NewItem("p", {}, f"{lo + i:064x}", v) for i, v in enumerate(vectors)])
    store.close()


def run(
    reader: str,
    template: Path,
    workdir: Path,
    dim: int,
    kind: str,
    rate: float,
    crop_bytes: int,
    hnsw: tuple[int, int],
) -> dict[str, Any]:
    from service.gallery import NewItem
    from service.gallery.local.backend import LocalGallery
    from service.gallery.local.index import IndexConfig

    folder = workdir / reader
    folder.mkdir()
    for name in os.listdir(template):
        shutil.copy(template / name, folder / name)
    database = folder / "gallery.sqlite3"
    # Opened as an exact index (no build at open); the build measured is the one started below.
    gallery = LocalGallery.open(database, dim, "bench", IndexConfig(hnsw_min_size=10**12), snapshots=False)
    if kind == "hnsw":
        config = IndexConfig(hnsw_min_size=1, hnsw_m=hnsw[0], hnsw_ef_construction=hnsw[1])
        collection = gallery.index._get("bench")
        assert collection is not None
        gallery.index.config = collection.config = config
    if reader == "one_transaction":
        gallery.index.source = OneTransactionSource(database)
    wal = Path(f"{database}-wal")
    samples: list[int] = []
    stop = threading.Event()
    written = 0

    def sample() -> None:
        while not stop.is_set():
            samples.append(wal.stat().st_size if wal.exists() else 0)
            stop.wait(0.05)

    def write() -> None:
        nonlocal written
        rng = np.random.default_rng(1)
        next_at = time.perf_counter()
        while not stop.is_set():
            vectors = rng.standard_normal((4, dim), dtype=np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            batch = [NewItem("w", {}, os.urandom(32).hex(), v, crop=os.urandom(crop_bytes)) for v in vectors]
            gallery.add("bench", batch)
            written += len(batch)
            next_at += len(batch) / rate
            stop.wait(max(0.0, next_at - time.perf_counter()))

    wal_before = wal.stat().st_size if wal.exists() else 0
    threads = [threading.Thread(target=sample), threading.Thread(target=write)]
    for t in threads:
        t.start()
    start = time.perf_counter()
    assert gallery.index.schedule_build("bench")
    gallery.index.wait_for_builds()
    build_s = time.perf_counter() - start
    stop.set()
    for t in threads:
        t.join()
    result = {
        "build_s": build_s,
        "kind": gallery.index.kind("bench"),
        "items_written_during_build": written,
        "mib_written_during_build": written * (crop_bytes + 4 * dim) / 2**20,
        "wal_mib_at_start": wal_before / 2**20,
        "wal_mib_peak": max(samples, default=0) / 2**20,
        "wal_mib_at_end": (wal.stat().st_size if wal.exists() else 0) / 2**20,
    }
    gallery.close()
    logger.info("%s: %s", reader, result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n")[0] if __doc__ else "", "build_wal.json")
    parser.add_argument("--n", type=int, default=100_000, help="gallery size before the build")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--kind", choices=["flat", "hnsw"], default="hnsw", help="index the build makes")
    parser.add_argument("--rate", type=float, default=50.0, help="items registered per second during the build")
    parser.add_argument("--hnsw-m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=40)
    parser.add_argument("--crop-bytes", type=int, default=16_384, help="size of each registered crop")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    if args.quick:
        args.n, args.dim = 5000, 64
    with tempfile.TemporaryDirectory(prefix="reid-build-wal-") as tmp:
        template = Path(tmp) / "template"
        fill(template / "gallery.sqlite3", args.n, args.dim)
        with sqlite3.connect(template / "gallery.sqlite3") as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        results = {
            reader: run(
                reader,
                template,
                Path(tmp),
                args.dim,
                args.kind,
                args.rate,
                args.crop_bytes,
                (args.hnsw_m, args.ef_construction),
            )
            for reader in ("one_transaction", "short_transactions")
        }
    payload = {
        "benchmark": "build_wal",
        "quick": args.quick,
        "machine": machine_info(),
        "n": args.n,
        "dim": args.dim,
        "kind": args.kind,
        "hnsw_m": args.hnsw_m,
        "ef_construction": args.ef_construction,
        "write_rate_items_per_s": args.rate,
        "crop_bytes": args.crop_bytes,
        "note": "loaded shared 2-core machine; both readers measured in one run",
        **results,
    }
    write_results(Path(args.out), payload)
    headers = ["build reader", "build s", "MiB written meanwhile", "WAL MiB at start", "WAL MiB peak", "at end"]
    rows = [
        [
            reader,
            r["build_s"],
            r["mib_written_during_build"],
            r["wal_mib_at_start"],
            r["wal_mib_peak"],
            r["wal_mib_at_end"],
        ]
        for reader, r in results.items()
    ]
    print(markdown_table(headers, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

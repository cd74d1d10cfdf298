"""Index lifecycle benchmark on the local gallery: background HNSW build, queries during it, restarts.

Builds a gallery of N random unit vectors through the gallery layer (SQLite + FAISS, service/gallery/local/backend.py),
crossing --hnsw-min-size so the HNSW index is built in the background; single-vector queries (k=10) run in a
loop for as long as the build does, then on the idle index. Then the gallery is closed and reopened twice: with
its snapshot (load + replay) and without it (exact index from SQLite, serving at once, HNSW rebuilt in the
background: ``restart_s_rebuild`` is the time to serve, ``restart_s_rebuild_hnsw`` until HNSW is back).
``index_rss_mib`` is the resident memory the reopened (snapshot) gallery added to the process.

    .venv/bin/python -m benchmarks.index_lifecycle --n 100000 --dim 512 --hnsw-min-size 50000 \
        --out benchmarks/results/index_lifecycle.json
"""

from __future__ import annotations

import gc
import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import base_parser, current_rss_mib, machine_info, percentiles, setup_logging, write_results

logger = logging.getLogger(__name__)


def _open(path: Path, dim: int, min_size: int) -> Any:
    from service.gallery.local.backend import LocalGallery
    from service.gallery.local.index import IndexConfig

    return LocalGallery.open(path / "gallery.sqlite3", dim, "bench", IndexConfig(hnsw_min_size=min_size))


def run(n: int, dim: int, min_size: int, workdir: Path, batch: int = 1000) -> dict[str, Any]:
    from service.gallery import NewItem

    rng = np.random.default_rng(0)
    queries = rng.standard_normal((256, dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    gallery = _open(workdir, dim, min_size)
    build_started = threading.Event()
    start_times: list[float] = []

    def hook(collection: str, point: str) -> None:
        if point == "start":
            start_times.append(time.perf_counter())
            build_started.set()

    gallery.index.build_hook = hook
    add_start = time.perf_counter()
    during: list[float] = []
    for lo in range(0, n, batch):
        vectors = rng.standard_normal((min(batch, n - lo), dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        gallery.add("bench", [NewItem(f"p{lo + i}", {}, f"{lo + i:064d}", v) for i, v in enumerate(vectors)])
    add_s = time.perf_counter() - add_start
    logger.info("added %d vectors in %.1f s (build started: %s)", n, add_s, build_started.is_set())
    # Query while the build runs (one vector, k=10, as a one-crop /query does).
    q = 0
    while (gallery.index.stats("bench") or {}).get("building"):
        t0 = time.perf_counter()
        gallery.search("bench", queries[q % len(queries)][None], 10)
        during.append((time.perf_counter() - t0) * 1000)
        q += 1
    gallery.index.wait_for_builds()
    build_s = time.perf_counter() - start_times[0] if start_times else 0.0
    idle = []
    for i in range(200):
        t0 = time.perf_counter()
        gallery.search("bench", queries[i % len(queries)][None], 10)
        idle.append((time.perf_counter() - t0) * 1000)
    kind = gallery.index.kind("bench")
    close_start = time.perf_counter()
    gallery.close()
    close_s = time.perf_counter() - close_start
    snapshot_mib = sum(p.stat().st_size for p in (workdir / "indexes").glob("*")) / 1024**2
    sqlite_mib = sum(p.stat().st_size for p in workdir.glob("gallery.sqlite3*")) / 1024**2

    gc.collect()
    rss_before = current_rss_mib()
    t0 = time.perf_counter()
    reopened = _open(workdir, dim, min_size)
    restart_s_snapshot = time.perf_counter() - t0
    index_rss_mib = current_rss_mib() - rss_before
    assert reopened.load_report.from_snapshot == 1, reopened.load_report
    reopened.abandon()
    del reopened
    gc.collect()

    shutil.rmtree(workdir / "indexes")
    t0 = time.perf_counter()
    rebuilt = _open(workdir, dim, min_size)
    restart_s_rebuild = time.perf_counter() - t0
    rebuilt.index.wait_for_builds()
    restart_s_rebuild_hnsw = time.perf_counter() - t0
    rebuilt.abandon()
    return {
        "n": n,
        "dim": dim,
        "hnsw_min_size": min_size,
        "kind_after_build": kind,
        "add_s": add_s,
        "build_s": build_s,
        "queries_during_build": len(during),
        "query_ms_p50_during_build": percentiles(during, (50,))["p50"] if during else None,
        "query_ms_max_during_build": max(during) if during else None,
        "query_ms_p50_idle": percentiles(idle, (50,))["p50"],
        "query_ms_p99_idle": percentiles(idle, (99,))["p99"],
        "close_s_with_snapshot": close_s,
        "snapshot_mib": snapshot_mib,
        "sqlite_mib": sqlite_mib,
        "restart_s_snapshot": restart_s_snapshot,
        "restart_s_rebuild": restart_s_rebuild,
        "restart_s_rebuild_hnsw": restart_s_rebuild_hnsw,
        "index_rss_mib": index_rss_mib,
    }


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n")[0] if __doc__ else "", "index_lifecycle.json")
    parser.add_argument("--n", type=int, default=100_000, help="gallery size")
    parser.add_argument("--dim", type=int, default=512, help="embedding dimension")
    parser.add_argument("--hnsw-min-size", type=int, default=50_000, help="size that starts the HNSW build")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    if args.quick:
        args.n, args.dim, args.hnsw_min_size = 3000, 32, 1500
    with tempfile.TemporaryDirectory(prefix="reid-lifecycle-") as tmp:
        result = run(args.n, args.dim, args.hnsw_min_size, Path(tmp))
    payload = {"benchmark": "index_lifecycle", "quick": args.quick, "machine": machine_info(), **result}
    write_results(Path(args.out), payload)
    logger.info("%s", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Index scale benchmark: exact (flat) vs IVF vs HNSW on clustered synthetic embeddings, plus rebuild-from-SQLite.

For each gallery size N and dimension D it measures build time, queries/s (queries in batches of 32, the shape
of one /query request with 32 crops), recall@10 against exact search and index memory. Gallery vectors are a
normalised Gaussian mixture (about 20 crops per "identity", like a tracklet's crops), and queries are noisy
copies of gallery points, so approximate indexes face the near-duplicate neighbourhoods real galleries have.
The rebuild part fills the service's real SQLite store (service/gallery/local/store.py) and times
``rebuild_indexes``, the start-up path of the service, with the current IndexConfig defaults and with exact search only.

    .venv/bin/python -m benchmarks.index_scale --out benchmarks/results/index_scale.json
    .venv/bin/python -m benchmarks.index_scale --quick --out /tmp/index_quick.json
"""

from __future__ import annotations

import gc
import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    Stopwatch,
    base_parser,
    ensure_repo_on_path,
    machine_info,
    markdown_table,
    setup_logging,
    write_results,
)

ensure_repo_on_path()

import faiss  # noqa: E402

logger = logging.getLogger(__name__)

K = 10
QUERY_BATCH = 32
CROPS_PER_IDENTITY = 20


@dataclass
class IndexRow:
    n: int
    dim: int
    index: str
    params: str
    build_s: float | None
    qps: float | None
    recall_at_10: float | None
    memory_mib: float | None
    memory_estimated: bool
    status: str = "measured"


def clustered_vectors(n: int, dim: int, seed: int, spread: float = 0.6) -> np.ndarray:
    """(n, dim) float32 unit rows: identity centres plus per-crop noise (within-identity cosine ~0.85)."""
    rng = np.random.default_rng(seed)
    n_centres = max(1, n // CROPS_PER_IDENTITY)
    centres = rng.standard_normal((n_centres, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), dtype=np.float32)
    chunk = 65_536
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        assign = rng.integers(0, n_centres, size=stop - start)
        block = rng.standard_normal((stop - start, dim), dtype=np.float32)
        block *= spread / math.sqrt(dim)
        block += centres[assign]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start:stop] = block
    return out


def make_queries(gallery: np.ndarray, nq: int, seed: int, spread: float = 0.6) -> np.ndarray:
    """Noisy copies of random gallery points (another view of a registered player), unit rows."""
    rng = np.random.default_rng(seed)
    picks = gallery[rng.integers(0, gallery.shape[0], size=nq)]
    noise = rng.standard_normal(picks.shape, dtype=np.float32) * (spread / math.sqrt(gallery.shape[1]))
    queries = picks + noise
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return np.ascontiguousarray(queries, dtype=np.float32)


def timed_search(index: Any, queries: np.ndarray, k: int = K) -> tuple[np.ndarray, float]:
    """Search in batches of QUERY_BATCH; returns (ids (nq, k), queries per second)."""
    ids = np.empty((queries.shape[0], k), dtype=np.int64)
    index.search(queries[:QUERY_BATCH], k)  # warm-up: OpenMP threads and caches, not timed
    start = time.perf_counter()
    for lo in range(0, queries.shape[0], QUERY_BATCH):
        _, found = index.search(queries[lo : lo + QUERY_BATCH], k)
        ids[lo : lo + QUERY_BATCH] = found
    return ids, queries.shape[0] / (time.perf_counter() - start)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the exact top-k found in the approximate top-k."""
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    return hits / truth.size


def index_mib(index: Any) -> float:
    return len(faiss.serialize_index(index)) / 1024**2


def hnsw_bytes_estimate(n: int, dim: int, m: int) -> float:
    # vectors + level-0 links (2M int32) + upper levels (~1/M of nodes with M links) + per-node offsets.
    return (n * dim * 4 + n * 2 * m * 4 + n * 4 * 1.1 + n * 16) / 1024**2


def bench_one(
    n: int,
    dim: int,
    nq: int,
    hnsw_params: list[tuple[int, int, int]],
    ef_searches: list[int],
    nprobes: list[int],
    serialize_max_n: int,
    seed: int,
    hnsw_rate_hint: dict[tuple[int, int, int], tuple[int, float]],
) -> list[IndexRow]:
    rows: list[IndexRow] = []
    with Stopwatch() as gen:
        gallery = clustered_vectors(n, dim, seed)
        queries = make_queries(gallery, nq, seed + 1)
    logger.info("N=%d D=%d: data generated in %.1f s", n, dim, gen.seconds)

    # Exact search: the ground truth and the service's default below the switch size.
    with Stopwatch() as sw:
        flat = faiss.IndexFlatIP(dim)
        flat.add(gallery)
    truth, flat_qps = timed_search(flat, queries)
    rows.append(IndexRow(n, dim, "flat", "IndexFlatIP", sw.seconds, flat_qps, 1.0, n * (dim * 4 + 8) / 1024**2, True))
    logger.info("N=%d D=%d flat: %.0f q/s", n, dim, flat_qps)
    del flat
    gc.collect()

    # IVF: nlist ~ sqrt(N), k-means on at most 40 points per list, 10 iterations (2 cores).
    nlist = max(16, round(math.sqrt(n)))
    with Stopwatch() as sw:
        quantizer = faiss.IndexFlatIP(dim)
        ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.niter = 10
        train_n = min(n, 40 * nlist)
        sample = gallery[np.random.default_rng(seed + 2).choice(n, size=train_n, replace=False)]
        ivf.train(sample)
        ivf.add(gallery)
    ivf_build = sw.seconds
    ivf_mem = index_mib(ivf) if n <= serialize_max_n else (n * (dim * 4 + 8) + nlist * dim * 4) / 1024**2
    for nprobe in nprobes:
        ivf.nprobe = nprobe
        found, qps = timed_search(ivf, queries)
        rows.append(
            IndexRow(
                n, dim, "ivf", f"nlist={nlist} nprobe={nprobe}", ivf_build, qps, recall_at_k(found, truth),
                ivf_mem, n > serialize_max_n,
            )
        )
        logger.info("N=%d D=%d ivf nprobe=%d: %.0f q/s recall %.3f", n, dim, nprobe, qps, rows[-1].recall_at_10)
    del ivf, quantizer
    gc.collect()

    # HNSW per (M, efConstruction, largest N built); larger N is extrapolated from the measured insert rate.
    for m, ef_construction, max_n in hnsw_params:
        params = f"M={m} efC={ef_construction}"
        if n <= max_n:
            with Stopwatch() as sw:
                hnsw = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
                hnsw.hnsw.efConstruction = ef_construction
                hnsw.add(gallery)
            hnsw_rate_hint[(dim, m, ef_construction)] = (n, n / sw.seconds)
            hnsw_mem = index_mib(hnsw) if n <= serialize_max_n else hnsw_bytes_estimate(n, dim, m)
            for ef in ef_searches:
                hnsw.hnsw.efSearch = ef
                found, qps = timed_search(hnsw, queries)
                rows.append(
                    IndexRow(
                        n, dim, "hnsw", f"{params} efS={ef}", sw.seconds, qps, recall_at_k(found, truth), hnsw_mem,
                        n > serialize_max_n,
                    )
                )
                logger.info("N=%d D=%d hnsw %s efS=%d: %.0f q/s recall %.3f (build %.1f s)", n, dim, params, ef, qps,
                            rows[-1].recall_at_10, sw.seconds)
            del hnsw
            gc.collect()
        else:
            measured = hnsw_rate_hint.get((dim, m, ef_construction))
            # Insert cost grows ~log N: scale the largest measured rate by log(n_measured)/log(n).
            est = None if measured is None else n / measured[1] * math.log(n) / math.log(measured[0])
            rows.append(
                IndexRow(
                    n, dim, "hnsw", params, est, None, None, hnsw_bytes_estimate(n, dim, m), True,
                    "not run (build too slow on 2 shared cores): build s extrapolated",
                )
            )
    del gallery, queries
    gc.collect()
    return rows


def bench_rebuild(n: int, dim: int, seed: int, default_config: Any) -> dict[str, Any]:
    """Fill the real SQLite store with n rows, then time the service's start-up rebuild (default + flat only)."""
    from service.core.metrics import ServiceMetrics
    from service.gallery.local.backend import LocalGallery
    from service.gallery.local.index import FaissIndexRegistry, IndexConfig
    from service.gallery.local.store import GalleryStore, NewItem

    vectors = clustered_vectors(n, dim, seed)
    with tempfile.TemporaryDirectory(prefix="reid-bench-rebuild-") as tmp:
        store = GalleryStore(Path(tmp) / "gallery.sqlite3", dim)
        with Stopwatch() as insert:
            for lo in range(0, n, 5000):
                items = [
                    NewItem(label=f"player-{(lo + i) // CROPS_PER_IDENTITY}", metadata={"frame": lo + i},
                            sha256="0" * 64, embedding=vectors[lo + i])
                    for i in range(min(5000, n - lo))
                ]
                store.insert_items("bench", items)
        db_mib = sum(p.stat().st_size for p in Path(tmp).glob("gallery.sqlite3*")) / 1024**2  # + WAL
        results: dict[str, Any] = {"n": n, "dim": dim, "insert_s": insert.seconds, "sqlite_mib": db_mib}
        for label, config in (
            ("flat_only", IndexConfig(hnsw_min_size=10**12)),
            ("service_default", default_config),
        ):
            registry = FaissIndexRegistry(dim, config)
            with Stopwatch() as sw:
                total = LocalGallery(store, registry, ServiceMetrics()).rebuild_indexes()
            assert total == n
            results[f"rebuild_{label}_s"] = sw.seconds
            results[f"rebuild_{label}_kind"] = registry.kind("bench")
            logger.info("rebuild N=%d D=%d %s: %.2f s (%s)", n, dim, label, sw.seconds, registry.kind("bench"))
            del registry
            gc.collect()
        store.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0], "index_scale.json")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dims", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--queries", type=int, default=1024, help="queries per (N, D); 256 above 100k")
    parser.add_argument(
        "--hnsw", nargs="+", default=["32:200:10000", "16:100:100000"],
        help="HNSW configs M:efConstruction:largest N to build (bigger N: build time extrapolated)",
    )
    parser.add_argument("--ef-search", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--rebuild-sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--rebuild-dim", type=int, default=512)
    parser.add_argument("--rebuild-only", action="store_true", help="skip the scale sweep")
    parser.add_argument("--no-rebuild", action="store_true", help="skip the rebuild-from-SQLite part")
    parser.add_argument("--threads", type=int, default=None, help="FAISS OpenMP threads (default: all)")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    if args.quick:
        args.sizes, args.dims, args.queries, args.rebuild_sizes = [2000], [64], 128, [1000]
        args.hnsw, args.rebuild_dim = ["32:200:2000", "16:100:2000"], 64
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    from service.core.settings import Settings
    from service.gallery.local.index import IndexConfig

    defaults = {name: Settings.model_fields[name].default for name in Settings.model_fields}
    service_config = IndexConfig(
        hnsw_min_size=defaults["hnsw_min_size"],
        hnsw_m=defaults["hnsw_m"],
        hnsw_ef_construction=defaults["hnsw_ef_construction"],
        hnsw_ef_search=defaults["hnsw_ef_search"],
    )

    hnsw_params = [tuple(int(v) for v in spec.split(":")) for spec in args.hnsw]
    rows: list[IndexRow] = []
    rate_hint: dict[tuple[int, int, int], tuple[int, float]] = {}
    for dim in [] if args.rebuild_only else args.dims:
        for n in sorted(args.sizes):
            nq = args.queries if n <= 100_000 else min(args.queries, 256)
            rows += bench_one(
                n, dim, nq, hnsw_params, args.ef_search,  # type: ignore[arg-type]
                args.nprobe, 100_000, seed=n + dim, hnsw_rate_hint=rate_hint,
            )
            write_results(args.out.with_suffix(".partial.json"), {"rows": [asdict(r) for r in rows]})
    rebuild_sizes = [] if args.no_rebuild else args.rebuild_sizes
    rebuilds = [bench_rebuild(n, args.rebuild_dim, seed=7, default_config=service_config) for n in rebuild_sizes]

    payload = {
        "benchmark": "index_scale",
        "quick": args.quick,
        "machine": machine_info(),
        "faiss_threads": faiss.omp_get_max_threads(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "log_level")},
        "service_index_config": asdict(service_config),
        "k": K,
        "query_batch": QUERY_BATCH,
        "rows": [asdict(r) for r in rows],
        "rebuild": rebuilds,
    }
    write_results(args.out, payload)
    print(
        markdown_table(
            ["N", "D", "index", "params", "build s", "queries/s", "recall@10", "memory MiB", "note"],
            [
                (r.n, r.dim, r.index, r.params, r.build_s, r.qps, r.recall_at_10, r.memory_mib,
                 ("est. " if r.memory_estimated else "") + ("" if r.status == "measured" else r.status))
                for r in rows
            ],
        )
    )
    print()
    print(
        markdown_table(
            ["N", "D", "SQLite insert s", "SQLite MiB", "rebuild flat s", "rebuild default s", "default kind"],
            [
                (r["n"], r["dim"], r["insert_s"], r["sqlite_mib"], r["rebuild_flat_only_s"],
                 r["rebuild_service_default_s"], r["rebuild_service_default_kind"])
                for r in rebuilds
            ],
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

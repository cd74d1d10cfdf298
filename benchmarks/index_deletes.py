"""Search cost and recall as items are deleted, with no compaction in between (service/gallery/local/index.py).

One collection of N unit vectors in clusters (identities with several crops each), served as an exact flat index
and as HNSW. Deleted shares 0, 0.1 and 0.3 are reached by deleting random items through the registry (flat: the
vectors go; HNSW: tombstones, filtered inside the FAISS search by an ID selector), builds switched off so nothing
is compacted. At each share: single-query search latency (k=10; p50 over the queries) and recall@10 against exact
search over the live vectors. For HNSW the previous approach (fetch k + tombstones with efSearch raised to match,
then drop the tombstones) is timed on the same index as ``legacy_p50_ms`` for comparison.

    .venv/bin/python -m benchmarks.index_deletes --n 100000 --dim 512 --out benchmarks/results/index_deletes.json
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from benchmarks.common import base_parser, machine_info, markdown_table, percentiles, setup_logging, write_results

logger = logging.getLogger(__name__)

SHARES = (0.0, 0.1, 0.3)
build_threads = faiss.omp_get_max_threads()
K = 10


def clustered(rng: np.random.Generator, n: int, dim: int, per_identity: int = 10) -> np.ndarray:
    """(n, dim) float32 unit rows: ``n / per_identity`` identity centres, each crop a noisy copy of its centre."""
    centres = rng.standard_normal((max(1, n // per_identity), dim), dtype=np.float32)
    vectors = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.standard_normal((n, dim), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def exact_top(vectors: np.ndarray, live: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) ids of the exact top-k live vectors per query (ids are row numbers)."""
    ids = np.flatnonzero(live)
    scores = queries @ vectors[ids].T
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return ids[top]


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    hits = sum(len(set(f) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    return hits / truth.size


def timed_searches(search: Any, queries: np.ndarray, repeats: int = 1) -> tuple[list[float], list[list[int]]]:
    """Latency (ms) of one search per query (the fastest of ``repeats``: a loaded machine's stalls are not the
    index's cost) and the ids each returned."""
    times: list[float] = []
    found: list[list[int]] = []
    for q in queries:
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            ids = search(q[None, :])
            best = min(best, (time.perf_counter() - start) * 1000)
        times.append(best)
        found.append(ids)
    return times, found


def legacy_hnsw_search(registry: Any, collection: str, query: np.ndarray, k: int) -> list[int]:
    """The search before this change: k + tombstones neighbours at efSearch >= that, tombstones dropped after."""
    index = registry._get(collection)
    with index.lock:
        tombstones = index.tombstones
        fetch = min(k + len(tombstones), index.main.ntotal)
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(index.config.hnsw_ef_search, fetch)  # the old rule: the beam grows with fetch
        _, ids = index.main.search(query, fetch, params=params)
    return [int(i) for i in ids[0] if i >= 0 and int(i) not in tombstones][:k]


def run_kind(
    kind: str,
    vectors: np.ndarray,
    queries: np.ndarray,
    n_legacy: int,
    seed: int,
    threads: int,
    repeats: int = 1,
    reference: bool = False,
) -> dict[str, Any]:
    from service.gallery.local.index import FaissIndexRegistry, IndexConfig, _hnsw_cpu

    n, dim = vectors.shape
    config = IndexConfig(hnsw_min_size=10**12, compact_min_tombstones=10**12)
    registry = FaissIndexRegistry(dim, config)
    registry.auto_build = False  # no compaction between the shares
    ids = np.arange(n, dtype=np.int64)
    faiss.omp_set_num_threads(build_threads)
    start = time.perf_counter()
    if kind == "hnsw":
        index = _hnsw_cpu(dim, config)
        index.add_with_ids(vectors, ids)
        registry.install("c", index, "hnsw", set())
    else:
        registry.add("c", ids, vectors)
    build_s = time.perf_counter() - start
    logger.info("%s index of %d x %d built in %.1f s", kind, n, dim, build_s)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    live = np.ones(n, dtype=bool)
    deleted = 0
    out: dict[str, Any] = {"build_s": build_s, "p50_ms": {}, "p95_ms": {}, "recall_at_10": {}, "tombstones": {}}
    if kind == "hnsw":
        out["legacy_p50_ms"] = {}
        out["legacy_recall_at_10"] = {}
    faiss.omp_set_num_threads(threads)  # searches only (the build above used every core)
    for q in queries[:50]:  # warm up (caches, thread pool)
        registry.search("c", q[None, :], K)
    for share in SHARES:
        target = round(share * n)
        if target > deleted:
            gone = order[deleted:target]
            registry.remove("c", gone)
            live[gone] = False
            deleted = target
        truth = exact_top(vectors, live, queries, K)
        times, found = timed_searches(lambda q: [i for i, _ in registry.search("c", q, K)[0]], queries, repeats)
        key = f"{share:.1f}"
        out["p50_ms"][key] = percentiles(times, (50,))["p50"]
        out["p95_ms"][key] = percentiles(times, (95,))["p95"]
        out["recall_at_10"][key] = recall(found, truth)
        stats = registry.stats("c")
        out["tombstones"][key] = stats["tombstones"] if stats else None
        if kind == "hnsw":
            legacy_q = queries[:n_legacy]
            times, found = timed_searches(lambda q: legacy_hnsw_search(registry, "c", q, K), legacy_q, repeats)
            out["legacy_p50_ms"][key] = percentiles(times, (50,))["p50"]
            out["legacy_recall_at_10"][key] = recall(found, truth[:n_legacy])
        measured = {name: values.get(key) for name, values in out.items() if isinstance(values, dict)}
        logger.info("%s at %.0f%% deleted: %s", kind, 100 * share, measured)
    if reference and kind == "hnsw":
        # What compaction would give: a graph built from the live vectors only, searched at the configured ef.
        # Deleting items changes the true neighbours (they get harder to find), so this, not the 0% figure, is
        # the recall a filtered search on the old graph should match.
        faiss.omp_set_num_threads(build_threads)
        fresh = _hnsw_cpu(dim, config)
        fresh.add_with_ids(vectors[live], np.flatnonzero(live).astype(np.int64))
        faiss.omp_set_num_threads(threads)
        params = faiss.SearchParametersHNSW()
        params.efSearch = config.hnsw_ef_search
        times, found = timed_searches(lambda q: fresh.search(q, K, params=params)[1][0].tolist(), queries, repeats)
        key = f"{SHARES[-1]:.1f}"
        out["compacted_p50_ms"] = {key: percentiles(times, (50,))["p50"]}
        out["compacted_recall_at_10"] = {key: recall(found, truth)}
        logger.info(
            "hnsw compacted at %s: %s", key, {"p50": out["compacted_p50_ms"], "recall": out["compacted_recall_at_10"]}
        )
    registry.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n")[0] if __doc__ else "", "index_deletes.json")
    parser.add_argument("--n", type=int, default=100_000, help="collection size")
    parser.add_argument("--dim", type=int, default=512, help="embedding dimension")
    parser.add_argument("--queries", type=int, default=300, help="single-vector searches per measurement")
    parser.add_argument("--legacy-queries", type=int, default=60, help="searches timed with the previous method")
    parser.add_argument("--kinds", default="flat,hnsw", help="comma-separated: flat, hnsw")
    parser.add_argument("--threads", type=int, default=1, help="FAISS threads while searching (one query each)")
    parser.add_argument("--repeats", type=int, default=3, help="timings per query; the fastest counts")
    parser.add_argument(
        "--reference", action="store_true", help="also build a compacted HNSW of the live vectors (recall reference)"
    )
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    if args.quick:
        args.n, args.dim, args.queries, args.legacy_queries = 3000, 32, 100, 20
    rng = np.random.default_rng(0)
    vectors = clustered(rng, args.n, args.dim)
    # Queries: other crops of gallery identities (noisy copies of gallery vectors).
    sources = vectors[rng.integers(0, args.n, args.queries)]
    queries = sources + 0.5 * rng.standard_normal(sources.shape, dtype=np.float32) / np.sqrt(args.dim)
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    results = {
        kind: run_kind(kind, vectors, queries, args.legacy_queries, 1, args.threads, args.repeats, args.reference)
        for kind in args.kinds.split(",")
        if kind
    }
    payload = {
        "benchmark": "index_deletes",
        "quick": args.quick,
        "machine": machine_info(),
        "n": args.n,
        "dim": args.dim,
        "k": K,
        "queries": args.queries,
        "search_threads": args.threads,
        "repeats_per_query": args.repeats,
        "note": "single-query latency on a loaded shared 2-core machine; compare ratios within one run",
        **results,
    }
    write_results(Path(args.out), payload)
    rows = []
    for kind, res in results.items():
        for share in SHARES:
            key = f"{share:.1f}"
            rows.append(
                [
                    kind,
                    f"{100 * share:.0f}%",
                    res["p50_ms"][key],
                    res["p50_ms"][key] / res["p50_ms"]["0.0"],
                    res["recall_at_10"][key],
                    res.get("legacy_p50_ms", {}).get(key),
                    res.get("legacy_recall_at_10", {}).get(key),
                ]
            )
    for kind, res in results.items():
        for key, value in res.get("compacted_recall_at_10", {}).items():
            rows.append([f"{kind} compacted", f"{100 * float(key):.0f}%", res["compacted_p50_ms"][key], None, value])
    headers = ["index", "deleted", "p50 ms", "p50 / p50 at 0%", "recall@10", "before: p50 ms", "before: recall@10"]
    print(markdown_table(headers, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

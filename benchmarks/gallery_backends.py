"""Gallery backends compared: local (SQLite + FAISS), Milvus Lite embedded, a real Milvus standalone server.

Everything goes through the gallery layer (service/gallery), not HTTP, and uses random unit vectors (D=512) in
a Gaussian mixture (about 20 vectors per identity), so the numbers are the storage backends' own, without
decoding or inference. Per backend and gallery size N: registration items/s (requests of 32 items, duplicate
check included), search latency p50/p99 for 1- and 32-vector queries at concurrency 1 and 16 (threads of one
process), recall@10 against exact search. On Milvus also: Milvus's own search latency (MilvusClient.search, the
same filter, consistency Bounded: the floor the gallery layer is measured against) and 1-vector searches through
one vs two replica processes (one search at a time each) on the same server. The standalone server
(``milvus-server``, PyPI ``milvus``, dev extra) runs in a temporary folder; ``milvus-lite-server`` is Milvus Lite's
gRPC server.

    .venv/bin/python -m benchmarks.gallery_backends --sizes 10000 100000 --out benchmarks/results/gallery_backends.json
    .venv/bin/python -m benchmarks.gallery_backends --quick --out /tmp/gallery_backends_quick.json
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    base_parser,
    ensure_repo_on_path,
    machine_info,
    markdown_table,
    percentiles,
    setup_logging,
    write_results,
)

ensure_repo_on_path()

logger = logging.getLogger(__name__)

DIM = 512
K = 10
BATCH = 32


@dataclass
class BackendRow:
    backend: str
    index: str
    n: int
    register_items_per_s: float
    latency_ms: dict[str, dict[str, float | None]]  # "nq=1,c=1" -> {p50, p99}
    recall_at_10: float
    replicas: list[dict[str, Any]] | None = None


def mixture(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, DIM) unit vectors: identities as centres, about 20 noisy members each."""
    centres = rng.standard_normal((max(1, n // 20), DIM)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def noisy_copies(vectors: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    picked = vectors[rng.integers(0, len(vectors), count)]
    q = picked + 0.3 * rng.standard_normal(picked.shape).astype(np.float32) / np.sqrt(DIM) * 4
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def open_backend(kind: str, index: str, folder: Path, server_uri: str | None, prefix: str) -> Any:
    from service.gallery.local.backend import LocalGallery
    from service.gallery.local.index import IndexConfig
    from service.gallery.milvus.backend import MilvusConfig, MilvusGallery

    if kind == "local":
        return LocalGallery.open(folder / f"{prefix}.sqlite3", DIM, "bench", IndexConfig())
    uri = str(folder / f"{prefix}.db") if kind == "milvus-lite-embedded" else str(server_uri)
    return MilvusGallery.open(MilvusConfig(uri=uri, prefix=prefix, index_type=index, timeout_s=600), DIM, "bench")


def raw_search_ms(
    gallery: Any, queries: np.ndarray, requests: int
) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """Milvus's own 1-vector search latency (MilvusClient.search, the gallery's filter and output fields, consistency
    Bounded) and gallery.search's, interleaved request by request so both see the same load."""
    state = gallery._existing("bench")
    own, through = [], []
    for r in range(requests):
        q = queries[r % len(queries)]
        t = time.perf_counter()
        gallery._client.search(
            gallery.items_name,
            data=[q.tolist()],
            filter=gallery._gallery_expr(state),
            limit=K,
            output_fields=["id", "gallery", "generation", "seq", "label", "metadata", "created_at", "sha256"],
            search_params={"metric_type": "IP"},
            consistency_level="Bounded",
        )
        own.append(time.perf_counter() - t)
        t = time.perf_counter()
        gallery.search("bench", q[None, :], K)
        through.append(time.perf_counter() - t)
    return percentiles([1000 * s for s in own], (50, 99)), percentiles([1000 * s for s in through], (50, 99))


def add_range(gallery: Any, vectors: np.ndarray, begin: int, end: int, batch: int) -> None:
    from service.gallery import NewItem

    for s in range(begin, end, batch):
        items = [NewItem(f"id-{i // 20}", {"i": i}, f"{i:064x}", vectors[i]) for i in range(s, min(end, s + batch))]
        gallery.add("bench", items)


def fill(gallery: Any, vectors: np.ndarray, sample: int) -> float:
    """Register the first ``sample`` vectors in requests of BATCH items (timed: items/s), the rest in requests of
    1024 (untimed, through the same gallery.add, duplicate check included)."""
    sample = min(sample, len(vectors))
    start = time.perf_counter()
    add_range(gallery, vectors, 0, sample, BATCH)
    rate = sample / max(time.perf_counter() - start, 1e-9)
    add_range(gallery, vectors, sample, len(vectors), 1024)
    return rate


def latencies(gallery: Any, queries: np.ndarray, nq: int, concurrency: int, requests: int) -> list[float]:
    """Per-request seconds of ``requests`` searches of nq vectors, ``concurrency`` at a time."""
    out: list[float] = []
    lock = threading.Lock()

    def one(r: int) -> None:
        q = queries[(r * nq) % (len(queries) - nq + 1) :][:nq]
        t = time.perf_counter()
        gallery.search("bench", q, K)
        with lock:
            out.append(time.perf_counter() - t)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(requests)))
    return out


def recall(gallery: Any, vectors: np.ndarray, queries: np.ndarray) -> float:
    found = gallery.search("bench", queries, K)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :K]
    hits = 0
    for per, truth in zip(found, exact, strict=True):
        got = {int(h.item.metadata["i"]) for h in per}
        hits += len(got & set(truth.tolist()))
    return hits / (K * len(queries))


def measure_backend(
    kind: str,
    index: str,
    n: int,
    folder: Path,
    server_uri: str | None,
    requests: int,
    sample: int,
    rng: np.random.Generator,
) -> BackendRow:
    prefix = f"b{kind[:6].replace('-', '')}{index.lower()}{n}"
    gallery = open_backend(kind, index, folder, server_uri, prefix)
    try:
        vectors = mixture(n, rng)
        rate = fill(gallery, vectors, sample)
        logger.info("%s/%s N=%d: %.0f items/s registered (first %d)", kind, index, n, rate, sample)
        queries = noisy_copies(vectors, 256, rng)
        table: dict[str, dict[str, float | None]] = {}
        if kind != "local":
            # Milvus Lite searches rows still in its memtable (flushed at 128 MiB) by a scan in Python, and
            # builds the index only when it flushes; Milvus standalone seals segments by itself. Measure the
            # unflushed search once, then flush so the grid below measures the index.
            runs = latencies(gallery, queries, 1, 1, max(3, requests // 4))
            table["unflushed nq=1,c=1"] = percentiles([1000 * s for s in runs], (50, 99))
            gallery._client.flush(gallery.items_name, timeout=600)
        for nq in (1, 32):
            for conc in (1, 16):
                runs = latencies(gallery, queries, nq, conc, requests if conc == 1 else 2 * requests)
                p = percentiles([1000 * s for s in runs], (50, 99))
                table[f"nq={nq},c={conc}"] = p
                logger.info(
                    "%s/%s N=%d nq=%d c=%d: p50 %.1f ms p99 %.1f ms", kind, index, n, nq, conc, p["p50"], p["p99"]
                )
        if kind != "local":
            own, through = raw_search_ms(gallery, queries, requests)
            table["milvus own search nq=1,c=1"], table["gallery search nq=1,c=1 (interleaved)"] = own, through
            logger.info("%s/%s N=%d Milvus's own search %s, gallery.search %s", kind, index, n, own, through)
        rec = recall(gallery, vectors, queries[:64])
    finally:
        gallery.close()
    replicas = None
    if kind in ("milvus-server", "milvus-lite-server"):
        replicas = measure_replicas(str(server_uri), prefix, n, 4 * requests, queries)
    return BackendRow(kind, index, n, rate, table, rec, replicas)


# ---------------------------------------------------------------- replicas


def _replica_worker(
    uri: str, prefix: str, queries: np.ndarray, threads: int, requests: int, gate: Any, out: Any
) -> None:
    from service.gallery.milvus.backend import MilvusConfig, MilvusGallery

    gallery = MilvusGallery.open(MilvusConfig(uri=uri, prefix=prefix, timeout_s=600), DIM, "bench")
    gate.wait()
    start = time.perf_counter()
    runs = latencies(gallery, queries, 1, threads, requests)
    out.put((time.perf_counter() - start, runs))
    gallery.close()


def measure_replicas(uri: str, prefix: str, n: int, requests: int, queries: np.ndarray) -> list[dict[str, Any]]:
    """1-vector searches of an N-item gallery on one server, one at a time per replica process: 1 replica vs 2."""
    ctx = mp.get_context("spawn")
    rows = []
    for replicas in (1, 2):
        gate, out = ctx.Barrier(replicas + 1), ctx.Queue()
        procs = [
            ctx.Process(target=_replica_worker, args=(uri, prefix, queries, 1, requests // 2, gate, out))
            for _ in range(replicas)
        ]
        for p in procs:
            p.start()
        gate.wait()
        start = time.perf_counter()
        results = [out.get() for _ in procs]
        wall = time.perf_counter() - start
        for p in procs:
            p.join()
        runs = [r for _, per in results for r in per]
        p = percentiles([1000 * s for s in runs], (50, 99))
        rows.append({"replicas": replicas, "n": n, "searches_per_s": len(runs) / wall, **p})
        logger.info("%d replica(s) N=%d: %.1f searches/s, p50 %.1f ms", replicas, n, len(runs) / wall, p["p50"])
    return rows


# ---------------------------------------------------------------- schema


def measure_schema(uri: str, galleries: int, per_gallery: int, rng: np.random.Generator) -> dict[str, Any]:
    """A Milvus collection per gallery vs one collection with the gallery as partition key (raw MilvusClient)."""
    from pymilvus import DataType, MilvusClient

    client = MilvusClient(uri=uri, timeout=600)

    def schema(partition_key: bool) -> Any:
        s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        s.add_field("id", DataType.VARCHAR, is_primary=True, max_length=36)
        s.add_field("gallery", DataType.VARCHAR, max_length=256, is_partition_key=partition_key)
        s.add_field("embedding", DataType.FLOAT_VECTOR, dim=DIM)
        return s

    def index() -> Any:
        p = client.prepare_index_params()
        p.add_index("embedding", index_type="FLAT", metric_type="IP")
        return p

    data = {g: mixture(per_gallery, rng) for g in range(galleries)}
    # Layout 1: one collection per gallery; a new gallery costs create + index + load.
    create_s = []
    for g in range(galleries):
        t = time.perf_counter()
        client.create_collection(
            f"per_gallery_{g}", schema=schema(False), index_params=index(), consistency_level="Strong"
        )
        create_s.append(time.perf_counter() - t)
        rows = [{"id": f"{g}-{i}", "gallery": str(g), "embedding": v.tolist()} for i, v in enumerate(data[g])]
        client.insert(f"per_gallery_{g}", rows)
    # Layout 2: one collection, the gallery name as partition key; a new gallery is just its first insert.
    client.create_collection("shared", schema=schema(True), index_params=index(), consistency_level="Strong")
    for g in range(galleries):
        rows = [{"id": f"{g}-{i}", "gallery": str(g), "embedding": v.tolist()} for i, v in enumerate(data[g])]
        client.insert("shared", rows)
    q = [noisy_copies(data[0], 1, rng)[0].tolist()]

    def timed(fn: Any, reps: int = 20) -> float:
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        return 1000 * (time.perf_counter() - t) / reps

    per_ms = timed(lambda: client.search("per_gallery_0", data=q, limit=K))
    shared_ms = timed(lambda: client.search("shared", data=q, limit=K, filter='gallery == "0"'))
    # Milvus Lite scans rows still in its memtable; after a flush both layouts search sealed, indexed segments.
    for name in [f"per_gallery_{g}" for g in range(galleries)] + ["shared"]:
        client.flush(name)
    per_flushed_ms = timed(lambda: client.search("per_gallery_0", data=q, limit=K))
    shared_flushed_ms = timed(lambda: client.search("shared", data=q, limit=K, filter='gallery == "0"'))
    for g in range(galleries):
        client.drop_collection(f"per_gallery_{g}")
    client.drop_collection("shared")
    client.close()
    return {
        "galleries": galleries,
        "items_per_gallery": per_gallery,
        "new_gallery_collection_create_ms": 1000 * float(np.median(create_s)),
        "search_ms_collection_per_gallery": per_ms,
        "search_ms_partition_key": shared_ms,
        "search_ms_collection_per_gallery_flushed": per_flushed_ms,
        "search_ms_partition_key_flushed": shared_flushed_ms,
    }


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0], "gallery_backends.json")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000])
    parser.add_argument("--requests", type=int, default=40, help="searches per cell at concurrency 1 (x2 at 16)")
    parser.add_argument("--sample", type=int, default=1000, help="items registered in 32s, timed")
    parser.add_argument("--parts", nargs="+", default=["backends"], help="backends, schema")
    parser.add_argument("--milvus-index", nargs="+", default=["FLAT"])
    parser.add_argument("--backends", nargs="+", default=["local", "milvus-lite-embedded", "milvus-server"])
    parser.add_argument(
        "--skip", nargs="*", default=[], help="backend:N cells not run (e.g. milvus-lite-embedded:100000)"
    )
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    if args.quick:
        args.sizes, args.requests, args.milvus_index, args.sample = [500], 6, ["FLAT"], 200
    from tests.support.milvus_server import MilvusLiteServer, MilvusStandaloneServer

    rng = np.random.default_rng(0)
    rows: list[BackendRow] = []
    schema: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gallery-bench-") as tmp:
        folder = Path(tmp)
        servers: dict[str, Any] = {}
        try:
            if "milvus-server" in args.backends:
                servers["milvus-server"] = MilvusStandaloneServer(folder / "milvus-standalone").start()
            if "milvus-lite-server" in args.backends or "schema" in args.parts:
                servers["milvus-lite-server"] = MilvusLiteServer(folder / "milvus-lite-server").start()
            for n in args.sizes if "backends" in args.parts else []:
                for kind in args.backends:
                    if f"{kind}:{n}" in args.skip:
                        logger.info("skipping %s at N=%d (--skip)", kind, n)
                        continue
                    uri = servers[kind].uri if kind in servers else None
                    for index in ["service defaults"] if kind == "local" else args.milvus_index:
                        rows.append(measure_backend(kind, index, n, folder, uri, args.requests, args.sample, rng))
                        # Written after every row: a cell that never finishes (killed) leaves the others.
                        write_results(args.out, results(args, rows, schema, partial=True))
            if "schema" in args.parts:
                uri = servers["milvus-lite-server"].uri
                schema = measure_schema(uri, 4 if args.quick else 10, 100 if args.quick else 1000, rng)
        finally:
            for server in servers.values():
                server.kill()

    def cell(r: BackendRow, key: str) -> str:
        p = r.latency_ms.get(key)
        return f"{p['p50']:.1f} / {p['p99']:.1f}" if p else "-"

    def replica_cell(r: BackendRow, count: int) -> str:
        got = [x for x in r.replicas or [] if x["replicas"] == count]
        return f"{got[0]['p50']:.1f} / {got[0]['p99']:.1f}" if got else "-"

    cells = [f"nq={nq},c={c}" for nq in (1, 32) for c in (1, 16)]
    headers = ["backend", "index", "N", "register items/s", "recall@10"]
    headers += [f"{c} p50/p99 ms" for c in cells]
    headers += [
        "Milvus own search nq=1 (Bounded) p50/p99 ms",
        "gallery.search nq=1 interleaved p50/p99 ms",
        "1 replica nq=1 p50/p99 ms",
        "2 replicas nq=1 p50/p99 ms",
    ]
    table = [
        [r.backend, r.index, r.n, r.register_items_per_s, r.recall_at_10]
        + [cell(r, c) for c in cells]
        + [cell(r, "milvus own search nq=1,c=1"), cell(r, "gallery search nq=1,c=1 (interleaved)")]
        + [replica_cell(r, 1), replica_cell(r, 2)]
        for r in rows
    ]
    print(markdown_table(headers, table))
    if schema:
        print()
        print(schema)
    write_results(args.out, results(args, rows, schema, partial=False))
    return 0


def results(args: Any, rows: list[BackendRow], schema: dict[str, Any], partial: bool) -> dict[str, Any]:
    return {
        "quick": args.quick,
        "partial": partial,
        "machine": machine_info(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "rows": [asdict(r) for r in rows],
        "schema": schema,
    }


if __name__ == "__main__":
    raise SystemExit(main())

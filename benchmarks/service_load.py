"""Service load benchmark: async httpx load against a real uvicorn process, plus the raw model in-process.

One run measures, on the same machine and in this order:
1. the raw model's best batched throughput in-process (``Embedder.embed_batch`` on uint8 batches);
2. the service (dynamic batching on, REID_MAX_BATCH_SIZE=32): a concurrency sweep of POST /query with 1-crop and
   32-crop requests, and 32-crop requests made of 4 tracklets of 8 crops (``tracklets`` field: the batcher sees
   their crops like any others, the service pools each tracklet after embedding); crops/s, p50/p95/p99 latency,
   mean inference batch size (from /metrics);
3. the same service with batching off (REID_MAX_BATCH_SIZE=1) at the highest concurrency.
It reports service/raw at saturation and batched/unbatched at the highest concurrency.

The model is osnet_x0_25 at 256x128 (the demo model's architecture) with random weights: throughput does not
depend on the weights. Crops are 64x128 JPEGs of synthetic players (tests/support/images.py); the gallery holds a
few dozen crops so search and SQLite cost little next to the model.

    .venv/bin/python -m benchmarks.service_load --out benchmarks/results/service_load.json
    .venv/bin/python -m benchmarks.service_load --quick --out /tmp/service_quick.json
    .venv/bin/python -m benchmarks.service_load --concurrency 1 --multi-concurrency 1 --tracklet-concurrency 1 \
        --duration 4 --out benchmarks/results/service_load_tracklets.json     # the tracklet point, briefly
    .venv/bin/python -m benchmarks.service_load --runtime onnxruntime --out /tmp/service_onnx.json

--runtime is REID_RUNTIME for the server and the raw model alike (default torch, as the committed results);
benchmarks/runtime_compare.py runs torch and onnxruntime side by side in one run.
"""

from __future__ import annotations

import asyncio
import logging
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

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

from model import build_model, read_checkpoint_spec, save_checkpoint  # noqa: E402
from service.inference.embedder import Embedder  # noqa: E402
from tests.support.images import encode, files_field, player_crop  # noqa: E402
from tests.support.live_server import LiveServer, server_env  # noqa: E402

logger = logging.getLogger(__name__)

COLLECTION = "bench"


@dataclass
class LoadPoint:
    mode: str  # "batched" | "unbatched"
    max_batch_size: int
    crops_per_request: int
    concurrency: int
    requests: int
    errors: int
    crops: int
    seconds: float
    crops_per_s: float
    requests_per_s: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    mean_batch_size: float | None
    tracklets: int = 0  # tracklets per request (0: plain crops, one result each)


def make_checkpoint(path: Path, architecture: str, input_size: tuple[int, int]) -> Path:
    torch.manual_seed(0)
    model = build_model(architecture, num_classes=0, input_size=input_size).eval()
    save_checkpoint(model, path, threshold=0.5, metrics={"note": "random weights, benchmark only"})
    return path


def bench_checkpoint(
    given: Path | None, folder: Path, architecture: str, input_size: tuple[int, int]
) -> tuple[Path, tuple[int, int]]:
    """The checkpoint to serve and its input size: ``given`` as is, else a random-init one written to ``folder``."""
    if given is not None:
        spec = read_checkpoint_spec(given)
        return given, (spec.preprocess.height, spec.preprocess.width)
    return make_checkpoint(folder / "bench.safetensors", architecture, input_size), input_size


def raw_throughput(
    checkpoint: Path,
    batch_sizes: list[int],
    threads: int,
    min_seconds: float,
    runtime: str = "torch",
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """Best in-process crops/s of Embedder.embed_batch over the batch sizes (same code path as the service).

    Per batch size: the fastest of 1 s windows within min_seconds, as the CPU may be shared with other jobs.
    ``runtime`` and ``cache_dir`` (the exported graph's folder) are the service's REID_RUNTIME / REID_ONNX_CACHE_DIR.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        embedder = Embedder.from_checkpoint(checkpoint, "cpu", runtime, cache_dir=cache_dir, threads=threads)
        rng = np.random.default_rng(0)
        per_batch: dict[str, float] = {}
        for size in batch_sizes:
            crops = rng.integers(0, 256, size=(size, 3, *embedder.input_size), dtype=np.uint8)
            embedder.embed_batch(crops)  # warm-up
            best, begin = 0.0, time.perf_counter()
            while time.perf_counter() - begin < min_seconds:
                done, start = 0, time.perf_counter()
                while True:
                    embedder.embed_batch(crops)
                    done += size
                    elapsed = time.perf_counter() - start
                    if elapsed >= min(1.0, min_seconds / 2) and done >= size:
                        break
                best = max(best, done / elapsed)
            per_batch[str(size)] = best
            logger.info("raw batch %d: %.1f crops/s", size, per_batch[str(size)])
    finally:
        torch.set_num_threads(previous)
    best = max(per_batch, key=lambda k: per_batch[k])
    return {"per_batch_crops_per_s": per_batch, "best_batch": int(best), "best_crops_per_s": per_batch[best]}


def _best_raw(
    checkpoint: Path,
    batch_sizes: list[int],
    thread_counts: list[int],
    seconds: float,
    runtime: str = "torch",
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    runs = {str(t): raw_throughput(checkpoint, batch_sizes, t, seconds, runtime, cache_dir) for t in thread_counts}
    best_threads = max(runs, key=lambda t: runs[t]["best_crops_per_s"])
    return {**runs[best_threads], "threads": int(best_threads), "by_threads": runs}


def batch_stats(metrics_text: str) -> tuple[float, float]:
    """(sum, count) of reid_inference_batch_size from a Prometheus scrape."""

    def value(name: str) -> float:
        found = re.search(rf"^{name} ([0-9.e+-]+)$", metrics_text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    return value("reid_inference_batch_size_sum"), value("reid_inference_batch_size_count")


async def run_point(
    url: str, payloads: list[bytes], crops_per_request: int, concurrency: int, duration_s: float, tracklets: int = 0
) -> tuple[list[float], int, float]:
    """`concurrency` workers send /query back to back until duration_s; returns (latencies s, errors, seconds).
    With ``tracklets`` > 0 each request's crops form that many tracklets of equal size (consecutive crops)."""
    form: dict[str, Any] = {"collection": COLLECTION, "top_k": "10"}
    if tracklets:
        per = crops_per_request // tracklets
        form["tracklets"] = [f"track-{j // per}" for j in range(crops_per_request)]
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600.0, limits=limits) as client:
        start = time.perf_counter()
        deadline = start + duration_s

        async def worker(seed: int) -> None:
            nonlocal errors
            i = seed
            while time.perf_counter() < deadline:
                chosen = [payloads[(i + j) % len(payloads)] for j in range(crops_per_request)]
                i += crops_per_request
                sent = time.perf_counter()
                response = await client.post("/query", data=form, files=files_field(*chosen))
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - sent)
                else:
                    errors += 1
                    logger.warning("query answered %d: %s", response.status_code, response.text[:200])

        await asyncio.gather(*(worker(w * 7) for w in range(concurrency)))
        seconds = time.perf_counter() - start
    return latencies, errors, seconds


def sweep(
    server: LiveServer,
    mode: str,
    max_batch: int,
    payloads: list[bytes],
    plan: list[tuple[int, int, int]],
    duration_s: float,
) -> list[LoadPoint]:
    points: list[LoadPoint] = []
    with server.client() as client:
        for crops_per_request, concurrency, tracklets in plan:
            before = batch_stats(client.get("/metrics").text)
            latencies, errors, seconds = asyncio.run(
                run_point(server.url, payloads, crops_per_request, concurrency, duration_s, tracklets)
            )
            after = batch_stats(client.get("/metrics").text)
            batches = after[1] - before[1]
            pct = percentiles(latencies)
            crops = len(latencies) * crops_per_request
            point = LoadPoint(
                mode, max_batch, crops_per_request, concurrency, len(latencies), errors, crops, seconds,
                crops / seconds, len(latencies) / seconds,
                None if pct["p50"] is None else pct["p50"] * 1000,
                None if pct["p95"] is None else pct["p95"] * 1000,
                None if pct["p99"] is None else pct["p99"] * 1000,
                (after[0] - before[0]) / batches if batches else None,
                tracklets,
            )
            logger.info("%s", point)
            points.append(point)
    return points


def populate(server: LiveServer, payloads: list[bytes], size: int) -> None:
    with server.client(timeout=600.0) as client:
        for lo in range(0, size, 32):
            chunk = payloads[lo : lo + 32] or payloads[:32]
            labels = [f"player-{(lo + i) % 12}" for i in range(len(chunk))]
            response = client.post(
                "/gallery", data={"collection": COLLECTION, "labels": labels}, files=files_field(*chunk)
            )
            response.raise_for_status()


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0], "service_load.json")
    parser.add_argument("--architecture", default="osnet_x0_25")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32], help="for 1-crop requests")
    parser.add_argument("--multi-concurrency", type=int, nargs="+", default=[1, 2, 4], help="for 32-crop requests")
    parser.add_argument("--multi-crops", type=int, default=32)
    parser.add_argument(
        "--tracklet-concurrency", type=int, nargs="*", default=[1, 2], help="for multi-crop requests of tracklets"
    )
    parser.add_argument("--tracklets", type=int, default=4, help="tracklets per multi-crop tracklet request")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of load per point (plus the tail)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, server and raw model alike")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--delay-ms", type=float, default=5.0)
    parser.add_argument("--gallery", type=int, default=64, help="crops registered before the queries")
    parser.add_argument("--raw-batches", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--runtime", default="torch", choices=["torch", "onnxruntime", "auto"], help="REID_RUNTIME")
    parser.add_argument("--checkpoint", type=Path, default=None, help="serve this checkpoint (default: random init)")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    if args.quick:
        args.height, args.width, args.concurrency, args.multi_concurrency = 64, 32, [1, 4], [1]
        args.multi_crops, args.duration, args.gallery, args.raw_batches = 4, 0.5, 8, [1, 8]
        args.tracklets, args.tracklet_concurrency = 2, [1]
        args.threads = 1
    input_size = (args.height, args.width)
    payloads = [encode(player_crop(p, v), "JPEG", quality=90) for p in range(12) for v in range(6)]

    with tempfile.TemporaryDirectory(prefix="reid-bench-service-") as tmp:
        checkpoint, input_size = bench_checkpoint(args.checkpoint, Path(tmp), args.architecture, input_size)
        cache = Path(tmp) / "onnx"  # shared by the raw embedder and the servers: the graph is exported once
        raw_seconds = 0.2 if args.quick else 4.0
        # Raw model at 1 thread and at the server's thread count: on a shared CPU, 2 OpenMP threads on 2 busy
        # cores can be far slower than 1 (barrier waits on a descheduled thread); the best is the reference.
        raw_threads = sorted({1, args.threads})
        raw_before = _best_raw(checkpoint, args.raw_batches, raw_threads, raw_seconds, args.runtime, cache)
        if args.tracklet_concurrency and args.multi_crops % args.tracklets:
            parser.error(f"--multi-crops {args.multi_crops} is not a multiple of --tracklets {args.tracklets}")
        plan = (
            [(1, c, 0) for c in args.concurrency]
            + [(args.multi_crops, c, 0) for c in args.multi_concurrency]
            + [(args.multi_crops, c, args.tracklets) for c in args.tracklet_concurrency]
        )
        points: list[LoadPoint] = []
        top = max(args.concurrency)
        for mode, max_batch, mode_plan in (
            ("batched", args.max_batch, plan),
            ("unbatched", 1, [(1, top, 0)]),
        ):
            env = server_env(
                checkpoint,
                Path(tmp) / f"data-{mode}",
                REID_MAX_BATCH_SIZE=str(max_batch),
                REID_MAX_DELAY_MS=str(args.delay_ms),
                REID_TORCH_THREADS=str(args.threads),
                OMP_NUM_THREADS=str(args.threads),
                REID_WARMUP_BATCHES="2",
                REID_LOG_LEVEL="WARNING",
                REID_RUNTIME=args.runtime,
                REID_ONNX_CACHE_DIR=str(cache),
            )
            with LiveServer(env, log_path=Path(tmp) / f"server-{mode}.log") as server:
                populate(server, payloads, args.gallery)
                points += sweep(server, mode, max_batch, payloads, mode_plan, args.duration)

        # Measured again after the load: the CPU is shared, and the better of the two is the model's capability.
        raw_after = _best_raw(checkpoint, args.raw_batches, raw_threads, raw_seconds, args.runtime, cache)
    raw = max(raw_before, raw_after, key=lambda r: r["best_crops_per_s"])
    raw = {**raw, "before_load": raw_before, "after_load": raw_after}
    batched = [p for p in points if p.mode == "batched"]
    saturation = max(batched, key=lambda p: p.crops_per_s)
    b_top = next(p for p in batched if p.crops_per_request == 1 and p.concurrency == top)
    u_top = next(p for p in points if p.mode == "unbatched")
    ratios = {
        "service_over_raw_at_saturation": saturation.crops_per_s / raw["best_crops_per_s"],
        "saturation_point": {"crops_per_request": saturation.crops_per_request, "concurrency": saturation.concurrency},
        f"batched_over_unbatched_at_c{top}": b_top.crops_per_s / u_top.crops_per_s,
    }
    # what pooling costs: crops/s of tracklet requests over plain requests of as many crops, same concurrency
    plain_multi = {p.concurrency: p for p in batched if p.crops_per_request == args.multi_crops and not p.tracklets}
    for t in (p for p in batched if p.tracklets and p.concurrency in plain_multi):
        ratios[f"tracklets_over_plain_at_c{t.concurrency}"] = t.crops_per_s / plain_multi[t.concurrency].crops_per_s
    payload = {
        "benchmark": "service_load",
        "quick": args.quick,
        "machine": machine_info(),
        "model": {
            "architecture": args.architecture,
            "input_size": list(input_size),
            "weights": str(args.checkpoint.name) if args.checkpoint else "random (seed 0)",
        },
        "runtime": args.runtime,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "log_level")},
        "raw": raw,
        "points": [asdict(p) for p in points],
        "ratios": ratios,
    }
    write_results(args.out, payload)
    print(
        markdown_table(
            ["mode", "crops/request", "tracklets", "concurrency", "requests", "crops/s", "p50 ms", "p95 ms",
             "p99 ms", "mean batch", "errors"],
            [
                (p.mode, p.crops_per_request, p.tracklets or "-", p.concurrency, p.requests, p.crops_per_s, p.p50_ms,
                 p.p95_ms, p.p99_ms, p.mean_batch_size, p.errors)
                for p in points
            ],
        )
    )
    print()
    print(
        f"raw model best: {raw['best_crops_per_s']:.1f} crops/s at batch {raw['best_batch']}; "
        f"service/raw at saturation: {ratios['service_over_raw_at_saturation']:.2f}; "
        f"batched/unbatched at concurrency {top}: {ratios[f'batched_over_unbatched_at_c{top}']:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

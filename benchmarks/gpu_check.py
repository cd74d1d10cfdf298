"""One-call GPU check: every GPU figure docs/performance.md needs, in one JSON, within a time budget (gpu_check.sh).

Parts, in order of priority (each bounded in time; a part that fails records its error and the rest go on; the
JSON is rewritten after every part, so a run cut short still leaves what it measured):
1. embed throughput per architecture: bf16 autocast + channels_last at batch 1..256, fp32 at one batch;
2. training: 100 steps of pose_bilinear (P=8 x K=4 at 256x128, random crops) with AMP: steps/s, peak memory;
3. the service on CUDA under load: batched vs REID_MAX_BATCH_SIZE=1 at concurrency 32, and service/raw;
4. FAISS on the CPU cores: flat vs HNSW (the service's settings) at up to 1M x 512, recall@10 of HNSW;
   GPU FAISS only where `import faiss` brings GPU support (no fitting wheel is carried: see gpu_check.sh);
5. torch.compile on for every architecture, with the time left.

    bash benchmarks/gpu_check.sh                       # on the GPU machine; writes $OUT/gpu_check.json
    python -m benchmarks.gpu_check --allow-cpu --quick --out /tmp/gpu_check.json   # code path smoke run, no GPU

Written for the pinned torch and for torch 2.11 / Python 3.12 (what the lent GPU machine has): no newer APIs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import base_parser, ensure_repo_on_path, machine_info, percentiles, setup_logging, write_results

ensure_repo_on_path()

from model import build_model  # noqa: E402

logger = logging.getLogger(__name__)

NO_GPU = "gpu_check: no CUDA GPU visible to torch ({why}); nothing to measure. Run it on the GPU machine."
ARCHITECTURES = ("osnet_x0_25", "osnet_x1_0", "resnet50", "pose_bilinear")


class Budget:
    """A deadline for the whole run and a cap per part: ``left(cap)`` is the seconds a part may still use."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.perf_counter() + seconds

    def left(self, cap: float | None = None) -> float:
        remaining = self.deadline - time.perf_counter()
        return max(0.0, remaining if cap is None else min(cap, remaining))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_embed(model: Any, device: torch.device, batch: int, size: tuple[int, int], channels_last: bool,
                bf16: bool, seconds: float) -> dict[str, Any]:
    """Best of repeated model.embed calls on a uint8 batch (B, 3, H, W): crops/s and ms per batch."""
    x = torch.randint(0, 256, (batch, 3, *size), dtype=torch.uint8, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ctx = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.inference_mode(), ctx:
        for _ in range(3):
            model.embed(x)
        _sync(device)
        times: list[float] = []
        end = time.perf_counter() + seconds
        while len(times) < 3 or (time.perf_counter() < end and len(times) < 200):
            start = time.perf_counter()
            model.embed(x)
            _sync(device)
            times.append(time.perf_counter() - start)
    best = min(times)
    return {"batch": batch, "channels_last": channels_last, "bf16": bf16, "crops_per_s": round(batch / best, 1),
            "ms_per_batch": round(best * 1000, 3), "timed": len(times)}


def part_embed(device: torch.device, size: tuple[int, int], batches: list[int], budget: Budget, cap: float,
               architectures: tuple[str, ...] = ARCHITECTURES) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    per_arch = cap / len(architectures)
    for name in architectures:
        stop = time.perf_counter() + budget.left(per_arch)
        torch.manual_seed(0)
        model = build_model(name, num_classes=0, input_size=size).eval().to(device)
        model = model.to(memory_format=torch.channels_last)
        slot = max(0.05, (stop - time.perf_counter()) / (len(batches) + 1) * 0.6)
        rows.append({"architecture": name, "compiled": False,
                     **_time_embed(model, device, batches[len(batches) // 2], size, True, False, slot)})
        for batch in batches:
            if time.perf_counter() > stop:
                rows.append({"architecture": name, "batch": batch, "skipped": "time budget"})
                continue
            rows.append({"architecture": name, "compiled": False,
                         **_time_embed(model, device, batch, size, True, True, slot)})
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"input_size": list(size), "rows": rows,
            "note": "random weights; fp32 row at the middle batch, the others bf16 autocast + channels_last"}


def part_compile(device: torch.device, size: tuple[int, int], batches: list[int], budget: Budget,
                 architectures: tuple[str, ...] = ARCHITECTURES) -> dict[str, Any]:
    """torch.compile(model.embed) per architecture at the smallest and largest batch, while time is left."""
    rows: list[dict[str, Any]] = []
    for name in architectures:
        for batch in (batches[0], batches[-1]):
            if budget.left() < 20:
                rows.append({"architecture": name, "batch": batch, "skipped": "time budget"})
                continue
            torch.manual_seed(0)
            model = build_model(name, num_classes=0, input_size=size).eval().to(device)
            model = model.to(memory_format=torch.channels_last)
            model.embed = torch.compile(model.embed)
            started = time.perf_counter()
            try:
                row = _time_embed(model, device, batch, size, True, True, min(3.0, budget.left()))
            except Exception as exc:  # a compile failure is a finding, not the end of the check
                row = {"batch": batch, "error": f"{type(exc).__name__}: {exc}"[:500]}
            rows.append({"architecture": name, "compiled": True,
                         "compile_and_time_s": round(time.perf_counter() - started, 1), **row})
            del model
            torch._dynamo.reset()
    return {"rows": rows}


def part_train(device: torch.device, size: tuple[int, int], steps: int, budget: Budget, cap: float,
               warmup: int = 3) -> dict[str, Any]:
    """``steps`` optimiser steps of pose_bilinear (two layer-wise heads) on random crops, AMP as in training."""
    from training.config import LossConfig
    from training.train.loop import train_step
    from training.train.losses import ReIDCriterion

    torch.manual_seed(0)
    num_classes, P, K = 512, 8, 4
    model = build_model("pose_bilinear", num_classes=num_classes, input_size=size, layer_wise=["layer3", "layer4"])
    model = model.to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=3.5e-4, weight_decay=5e-4)
    criterion = ReIDCriterion(LossConfig())
    images = torch.rand(P * K, 3, *size, device=device)
    pids = torch.arange(P, device=device).repeat_interleave(K)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):  # cuDNN algorithm choice, allocator
        train_step(model, images, pids, criterion, optimizer, device, True, 5.0, True)
    _sync(device)
    stop = time.perf_counter() + budget.left(cap)
    done, started = 0, time.perf_counter()
    terms: dict[str, float] = {}
    while done < steps and (done == 0 or time.perf_counter() < stop):
        terms = train_step(model, images, pids, criterion, optimizer, device, True, 5.0, True)
        done += 1
    _sync(device)
    seconds = time.perf_counter() - started
    return {
        "architecture": "pose_bilinear", "layer_wise": ["layer3", "layer4"], "batch": P * K, "input_size": list(size),
        "amp": "bf16" if device.type == "cuda" else None, "steps": done, "seconds": round(seconds, 2),
        "steps_per_s": round(done / seconds, 2), "images_per_s": round(done * P * K / seconds, 1),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
        "last_loss": terms.get("loss"),
    }


def _raw_service_rate(checkpoint: Path, device: str, batch: int, seconds: float) -> float:
    """Crops/s of the service's own Embedder on ``device`` at one batch size (the service/raw reference)."""
    from service.inference.embedder import Embedder

    embedder = Embedder.from_checkpoint(checkpoint, device)
    crops = np.random.default_rng(0).integers(0, 256, size=(batch, 3, *embedder.input_size), dtype=np.uint8)
    for _ in range(3):
        embedder.embed_batch(crops)
    done, started = 0, time.perf_counter()
    while done < 3 * batch or time.perf_counter() - started < seconds:
        embedder.embed_batch(crops)
        done += batch
    return done / (time.perf_counter() - started)


def part_service(device: str, size: tuple[int, int], concurrency: int, seconds: float, architecture: str,
                 max_batch: int) -> dict[str, Any]:
    """A real uvicorn process on ``device``: 1-crop /query at ``concurrency``, batched and with batch size 1."""
    from benchmarks.service_load import COLLECTION, make_checkpoint, populate, run_point
    from tests.support.images import encode, player_crop
    from tests.support.live_server import LiveServer, server_env

    payloads = [encode(player_crop(p, v), "JPEG", quality=90) for p in range(12) for v in range(6)]
    result: dict[str, Any] = {"architecture": architecture, "input_size": list(size), "concurrency": concurrency,
                              "collection": COLLECTION, "modes": {}}
    with tempfile.TemporaryDirectory(prefix="reid-gpu-check-") as tmp:
        checkpoint = make_checkpoint(Path(tmp) / "bench.safetensors", architecture, size)
        result["raw_crops_per_s"] = round(_raw_service_rate(checkpoint, device, max_batch, seconds / 2), 1)
        for mode, batch in (("batched", max_batch), ("unbatched", 1)):
            env = server_env(checkpoint, Path(tmp) / f"data-{mode}", REID_DEVICE=device,
                             REID_MAX_BATCH_SIZE=str(batch), REID_MAX_DELAY_MS="5", REID_TORCH_THREADS="4",
                             OMP_NUM_THREADS="4", REID_WARMUP_BATCHES="2", REID_LOG_LEVEL="WARNING")
            with LiveServer(env, log_path=Path(tmp) / f"server-{mode}.log", ready_timeout_s=180.0) as server:
                populate(server, payloads, 64)
                latencies, errors, elapsed = asyncio.run(run_point(server.url, payloads, 1, concurrency, seconds))
            pct = percentiles(latencies)
            result["modes"][mode] = {
                "max_batch_size": batch, "requests": len(latencies), "errors": errors,
                "crops_per_s": round(len(latencies) / elapsed, 1),
                **{f"{k}_ms": None if v is None else round(v * 1000, 2) for k, v in pct.items()},
            }
    modes = result["modes"]
    result["batched_over_unbatched"] = round(modes["batched"]["crops_per_s"] / modes["unbatched"]["crops_per_s"], 2)
    result["service_over_raw"] = round(modes["batched"]["crops_per_s"] / result["raw_crops_per_s"], 3)
    return result


def part_faiss(n: int, dim: int, queries: int, budget: Budget, cap: float) -> dict[str, Any]:
    """Flat (exact) vs HNSW (service settings) on ``n`` clustered unit vectors; HNSW grows until its time is up."""
    import faiss

    from service.gallery.local.index import IndexConfig

    stop = time.perf_counter() + budget.left(cap)
    threads = os.cpu_count() or 1
    faiss.omp_set_num_threads(threads)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((max(1, n // 50), dim), dtype=np.float32)
    data = rng.standard_normal((n, dim), dtype=np.float32)
    data *= 0.6
    data += centres[rng.integers(0, len(centres), n)]
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    q = data[rng.integers(0, n, queries)] + 0.3 * rng.standard_normal((queries, dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    result: dict[str, Any] = {"n": n, "dim": dim, "queries": queries, "k": 10, "threads": threads}

    flat = faiss.IndexFlatIP(dim)
    flat.add(data)
    started = time.perf_counter()
    _, truth = flat.search(q, 10)
    result["flat"] = {"search_ms_per_query": round((time.perf_counter() - started) * 1000 / queries, 4)}

    config = IndexConfig()
    hnsw = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = config.hnsw_ef_construction
    hnsw.hnsw.efSearch = config.hnsw_ef_search
    built, chunk, started = 0, max(1000, n // 50), time.perf_counter()
    while built < n and (built == 0 or time.perf_counter() < stop):
        hnsw.add(data[built : built + chunk])
        built = hnsw.ntotal
    build_s = time.perf_counter() - started
    if built < n:  # recall against exact search over the same vectors
        partial = faiss.IndexFlatIP(dim)
        partial.add(data[:built])
        _, truth = partial.search(q, 10)
    started = time.perf_counter()
    _, found = hnsw.search(q, 10)
    search_s = time.perf_counter() - started
    recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))
    result["hnsw"] = {"m": config.hnsw_m, "ef_construction": config.hnsw_ef_construction,
                      "ef_search": config.hnsw_ef_search, "built": built, "build_s": round(build_s, 1),
                      "build_vectors_per_s": round(built / build_s, 1) if build_s else None,
                      "search_ms_per_query": round(search_s * 1000 / queries, 4), "recall_at_10": round(recall, 4)}
    if built < n:
        result["hnsw"]["note"] = f"time budget reached after {built} of {n} vectors; search and recall at that size"
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if gpus:
        res = faiss.StandardGpuResources()
        gpu_flat = faiss.index_cpu_to_gpu(res, 0, flat)
        gpu_flat.search(q[:10], 10)
        started = time.perf_counter()
        gpu_flat.search(q, 10)
        result["gpu_flat"] = {"search_ms_per_query": round((time.perf_counter() - started) * 1000 / queries, 4)}
    else:
        result["gpu_flat"] = {"skipped": "this faiss has no GPU support (no GPU faiss wheel fits the machine: "
                                         "see benchmarks/gpu_check.sh)"}
    result["faiss_version"] = faiss.__version__
    return result


def run_part(results: dict[str, Any], name: str, out: Path, fn: Callable[[], dict[str, Any]]) -> None:
    started = time.perf_counter()
    logger.info("part %s ...", name)
    try:
        results[name] = fn()
    except Exception as exc:  # one part's failure must not lose the others' figures
        results[name] = {"error": f"{type(exc).__name__}: {exc}"[:1000], "traceback": traceback.format_exc()[-3000:]}
        logger.error("part %s failed: %s", name, exc)
    results[name]["part_seconds"] = round(time.perf_counter() - started, 1)
    write_results(out, results)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0], "gpu_check.json")
    parser.add_argument("--budget-s", type=float, default=300.0, help="seconds for all parts together")
    parser.add_argument("--allow-cpu", action="store_true", help="run on the CPU (a smoke run of the code paths)")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    if not torch.cuda.is_available() and not args.allow_cpu:
        print(NO_GPU.format(why=f"torch {torch.__version__}, torch.cuda.is_available() is False"), file=sys.stderr)
        return 3
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = device.type == "cuda"
    budget = Budget(args.budget_s)
    # quick: toy sizes and the smallest model, to smoke-test the code paths on a CPU in about a minute
    size, batches = ((32, 16), [1, 2]) if args.quick else ((256, 128), [1, 8, 32, 128, 256])
    steps, warmup = (1, 1) if args.quick else (100, 3)
    n, dim, queries = (2000, 64, 50) if args.quick else (1_000_000, 512, 1000)
    concurrency, load_s, max_batch = (4, 1.0, 4) if args.quick else (32, 15.0, 32)
    archs = ("osnet_x0_25",) if args.quick else ARCHITECTURES
    service_arch = "osnet_x0_25" if args.quick else "pose_bilinear"
    results: dict[str, Any] = {"benchmark": "gpu_check", "quick": args.quick, "machine": machine_info(),
                               "budget_s": args.budget_s}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        results["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                          "capability": f"{props.major}.{props.minor}", "torch_cuda": torch.version.cuda}
    run_part(results, "embed", args.out,
             lambda: part_embed(device, size, batches, budget, 0.2 * args.budget_s, archs))
    run_part(results, "train", args.out,
             lambda: part_train(device, size, steps, budget, 0.12 * args.budget_s, warmup))
    run_part(results, "service", args.out,
             lambda: part_service(device.type, size, concurrency, load_s, service_arch, max_batch))
    run_part(results, "faiss", args.out, lambda: part_faiss(n, dim, queries, budget, 0.3 * args.budget_s))
    run_part(results, "compile", args.out, lambda: part_compile(device, size, batches, budget, archs))
    results["total_s"] = round(args.budget_s - budget.left(), 1)
    write_results(args.out, results)
    print(f"gpu_check: wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

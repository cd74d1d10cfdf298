"""Where one 32-crop /query spends its time: hash, decode, resize, to-array, decode pool, stack, forward, search,
SQLite, and the whole request through the ASGI app (the rest is HTTP, multipart and response building).

Stages are timed with perf_counter around the service's own functions (service/inference/imaging.py,
Embedder.embed_batch, FaissIndexRegistry.search, GalleryStore.get_by_faiss_ids) on a gallery of --gallery vectors in the
real SQLite store; medians over --repeats runs. osnet_x0_25 at 256x128 with random weights, as in service_load.

    .venv/bin/python -m benchmarks.profile_hot_path --out benchmarks/results/profile_hot_path.json
    .venv/bin/python -m benchmarks.profile_hot_path --crop-width 256 --crop-height 512 --out /tmp/profile_big.json
    .venv/bin/python -m benchmarks.profile_hot_path --runtime onnxruntime \\
        --out benchmarks/results/profile_hot_path_onnxruntime.json
"""

from __future__ import annotations

import hashlib
import io
import logging
import statistics
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from benchmarks.common import (
    base_parser,
    ensure_repo_on_path,
    machine_info,
    markdown_table,
    setup_logging,
    write_results,
)

ensure_repo_on_path()

from benchmarks.service_load import make_checkpoint  # noqa: E402
from service.app import create_app  # noqa: E402
from service.core.metrics import ServiceMetrics  # noqa: E402
from service.core.settings import Settings  # noqa: E402
from service.gallery.local.backend import LocalGallery  # noqa: E402
from service.gallery.local.index import FaissIndexRegistry  # noqa: E402
from service.gallery.local.store import GalleryStore, NewItem  # noqa: E402
from service.inference.embedder import Embedder  # noqa: E402
from service.inference.imaging import ImageLimits, decode_crop  # noqa: E402
from tests.support.images import encode, files_field, player_crop  # noqa: E402

logger = logging.getLogger(__name__)

LIMITS = ImageLimits(max_file_bytes=8 << 20, max_pixels=40_000_000, max_side=16_384, min_side=4)


def _median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def stage_times(
    payloads: list[bytes], embedder: Embedder, registry: FaissIndexRegistry, store: GalleryStore, workers: int
) -> dict[str, float]:
    """One pass over the hot path for len(payloads) crops; seconds per stage."""
    size = embedder.input_size
    out: dict[str, float] = {}
    t = time.perf_counter()
    for data in payloads:
        hashlib.sha256(data).hexdigest()
    out["sha256"] = time.perf_counter() - t

    decoded: list[Image.Image] = []
    t = time.perf_counter()
    for data in payloads:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
        decoded.append((ImageOps.exif_transpose(image) or image).convert("RGB"))
    out["decode (open+load+exif+RGB)"] = time.perf_counter() - t

    t = time.perf_counter()
    resized = [img.resize((size[1], size[0]), Image.Resampling.BILINEAR) for img in decoded]
    out["resize"] = time.perf_counter() - t

    t = time.perf_counter()
    arrays = [np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)) for img in resized]
    out["to uint8 CHW array"] = time.perf_counter() - t

    t = time.perf_counter()
    for i, data in enumerate(payloads):
        decode_crop(data, i, None, size, LIMITS)
    out["decode_crop, 1 thread (sum of the 4 above)"] = time.perf_counter() - t

    with ThreadPoolExecutor(workers) as pool:
        t = time.perf_counter()
        list(pool.map(lambda a: decode_crop(a[1], a[0], None, size, LIMITS), enumerate(payloads)))
        out[f"decode_crop, pool of {workers} (as the route)"] = time.perf_counter() - t

    t = time.perf_counter()
    batch = np.stack(arrays)
    out["np.stack (batcher)"] = time.perf_counter() - t

    model = getattr(embedder.runtime, "model", None)
    if model is not None:  # torch; in onnxruntime the normalisation is part of the graph
        t = time.perf_counter()
        tensor = torch.from_numpy(batch).float().div_(255.0)
        model.normalise(tensor)
        out["to float tensor + normalise"] = time.perf_counter() - t

    t = time.perf_counter()
    embeddings = embedder.embed_batch(batch)
    out["embed_batch (forward incl. the above)"] = time.perf_counter() - t

    t = time.perf_counter()
    hits = registry.search("bench", embeddings, 10)
    out["index search (top 10)"] = time.perf_counter() - t

    t = time.perf_counter()
    store.get_by_faiss_ids([i for per in hits for i, _ in per])
    out["SQLite rows of the hits"] = time.perf_counter() - t
    return out


def request_time(client: Any, payloads: list[bytes]) -> float:
    t = time.perf_counter()
    response = client.post("/query", data={"collection": "bench", "top_k": "10"}, files=files_field(*payloads))
    elapsed = time.perf_counter() - t
    response.raise_for_status()
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0], "profile_hot_path.json")
    parser.add_argument("--crops", type=int, default=32)
    parser.add_argument("--crop-width", type=int, default=64, help="uploaded JPEG size (SoccerNet crops are small)")
    parser.add_argument("--crop-height", type=int, default=128)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--gallery", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--decode-workers", type=int, default=Settings.model_fields["decode_workers"].default)
    parser.add_argument("--runtime", default="torch", choices=["torch", "onnxruntime"], help="REID_RUNTIME")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    if args.quick:
        args.crops, args.height, args.width, args.gallery, args.repeats, args.threads = 4, 64, 32, 200, 2, 1
    torch.set_num_threads(args.threads)
    crop_size = (args.crop_width, args.crop_height)
    payloads = [encode(player_crop(i % 12, i + 1, size=crop_size), "JPEG", quality=90) for i in range(args.crops)]

    with tempfile.TemporaryDirectory(prefix="reid-bench-profile-") as tmp:
        checkpoint = make_checkpoint(Path(tmp) / "bench.safetensors", "osnet_x0_25", (args.height, args.width))
        cache = Path(tmp) / "onnx"
        embedder = Embedder.from_checkpoint(checkpoint, "cpu", args.runtime, cache_dir=cache, threads=args.threads)
        embedder.warm_up([1, args.crops])
        dim = embedder.embedding_dim
        rng = np.random.default_rng(0)
        vectors = rng.standard_normal((args.gallery, dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        data_dir = Path(tmp) / "data"
        store = GalleryStore(data_dir / "gallery.sqlite3", dim)
        for lo in range(0, args.gallery, 5000):
            chunk = vectors[lo : lo + 5000]
            store.insert_items("bench", [NewItem(f"p{lo + i}", {}, "0" * 64, v) for i, v in enumerate(chunk)])
        registry = FaissIndexRegistry(dim)
        LocalGallery(store, registry, ServiceMetrics()).rebuild_indexes()

        runs = [stage_times(payloads, embedder, registry, store, args.decode_workers) for _ in range(args.repeats)]
        stages = {name: _median_ms([r[name] for r in runs]) for name in runs[0]}
        store.close()

        from fastapi.testclient import TestClient

        settings = Settings(
            checkpoint=checkpoint, data_dir=data_dir, device="cpu", torch_threads=args.threads, warmup_batches=2,
            decode_workers=args.decode_workers, runtime=args.runtime, onnx_cache_dir=cache,
        )
        with TestClient(create_app(settings)) as client:
            request_time(client, payloads)  # warm-up
            http_ms = _median_ms([request_time(client, payloads) for _ in range(args.repeats)])

    path_ms = (
        stages["sha256"]
        + stages[f"decode_crop, pool of {args.decode_workers} (as the route)"]
        + stages["np.stack (batcher)"]
        + stages["embed_batch (forward incl. the above)"]
        + stages["index search (top 10)"]
        + stages["SQLite rows of the hits"]
    )
    payload = {
        "benchmark": "profile_hot_path",
        "quick": args.quick,
        "machine": machine_info(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "log_level")},
        "runtime": args.runtime,
        "stages_ms": stages,
        "hot_path_sum_ms": path_ms,
        "http_request_ms": http_ms,
        "http_overhead_ms": http_ms - path_ms,
        "forward_share": stages["embed_batch (forward incl. the above)"] / http_ms,
    }
    write_results(args.out, payload)
    rows: list[tuple[str, float, float]] = [(name, ms, ms / http_ms * 100) for name, ms in stages.items()]
    rows.append(("whole POST /query through the ASGI app", http_ms, 100.0))
    rows.append(("rest: HTTP, multipart, routing, response (whole - path)", http_ms - path_ms,
                 (http_ms - path_ms) / http_ms * 100))
    print(f"{args.runtime}: {args.crops} crops of {crop_size[0]}x{crop_size[1]} JPEG -> {args.height}x{args.width}, "
          f"gallery {args.gallery} x {dim}")
    print(markdown_table(["stage", "median ms", "% of request"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

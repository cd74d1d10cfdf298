"""torch against onnxruntime on the CPU, side by side from one run: raw model and through HTTP, 1- and 32-crop requests.

For each runtime (REID_RUNTIME), in this order: the raw model in-process (``Embedder.embed_batch``, the service's
own code path) at each --raw-batches size, then a real uvicorn server (dynamic batching, REID_MAX_BATCH_SIZE=32)
under POST /query load: 1-crop requests at each --concurrency, and --multi-crops-crop requests one at a time.
Both runtimes get the same checkpoint, thread count and payloads; the ratio column is onnxruntime / torch.

    .venv/bin/python -m benchmarks.runtime_compare --checkpoint artifacts/osnet_x0_25_market.safetensors \\
        --out benchmarks/results/runtime_compare_osnet_x0_25.json
    .venv/bin/python -m benchmarks.runtime_compare --architecture resnet50 \\
        --out benchmarks/results/runtime_compare_resnet50.json
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.common import (
    base_parser,
    ensure_repo_on_path,
    machine_info,
    markdown_table,
    setup_logging,
    write_results,
)

ensure_repo_on_path()

from benchmarks.service_load import LoadPoint, bench_checkpoint, populate, raw_throughput, sweep  # noqa: E402
from tests.support.images import encode, player_crop  # noqa: E402
from tests.support.live_server import LiveServer, server_env  # noqa: E402

logger = logging.getLogger(__name__)

RUNTIMES = ("torch", "onnxruntime")


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0], "runtime_compare.json")
    parser.add_argument("--architecture", default="osnet_x0_25")
    parser.add_argument("--checkpoint", type=Path, default=None, help="serve this checkpoint (default: random init)")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="REID_TORCH_THREADS: intra-op threads, both runtimes")
    parser.add_argument("--raw-batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--raw-seconds", type=float, default=3.0, help="time budget per raw batch size")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16], help="for 1-crop requests")
    parser.add_argument("--multi-crops", type=int, default=32)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds of load per point")
    parser.add_argument("--gallery", type=int, default=64)
    parser.add_argument("--onnx-cache-dir", type=Path, default=None, help="reuse exported graphs (default: a temp dir)")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    if args.quick:
        args.height, args.width, args.raw_batches, args.raw_seconds = 64, 32, [1, 4], 0.2
        args.concurrency, args.multi_crops, args.duration, args.gallery = [1], 4, 0.5, 8
    payloads = [encode(player_crop(p, v), "JPEG", quality=90) for p in range(12) for v in range(6)]
    plan = [(1, c, 0) for c in args.concurrency] + [(args.multi_crops, 1, 0)]  # (crops, concurrency, tracklets)

    raw: dict[str, dict[str, Any]] = {}
    points: dict[str, list[LoadPoint]] = {}
    with tempfile.TemporaryDirectory(prefix="reid-bench-runtimes-") as tmp:
        checkpoint, input_size = bench_checkpoint(
            args.checkpoint, Path(tmp), args.architecture, (args.height, args.width)
        )
        cache = args.onnx_cache_dir or Path(tmp) / "onnx"
        for runtime in RUNTIMES:  # the ONNX export happens here, outside every timed window
            raw[runtime] = raw_throughput(checkpoint, args.raw_batches, args.threads, args.raw_seconds, runtime, cache)
        for runtime in RUNTIMES:
            env = server_env(
                checkpoint,
                Path(tmp) / f"data-{runtime}",
                REID_MAX_BATCH_SIZE="32",
                REID_TORCH_THREADS=str(args.threads),
                OMP_NUM_THREADS=str(args.threads),
                REID_WARMUP_BATCHES="2",
                REID_LOG_LEVEL="WARNING",
                REID_RUNTIME=runtime,
                REID_ONNX_CACHE_DIR=str(cache),
            )
            with LiveServer(env, log_path=Path(tmp) / f"server-{runtime}.log") as server:
                populate(server, payloads, args.gallery)
                points[runtime] = sweep(server, "batched", 32, payloads, plan, args.duration)

    rows: list[dict[str, Any]] = []
    for batch in args.raw_batches:
        values = {r: raw[r]["per_batch_crops_per_s"][str(batch)] for r in RUNTIMES}
        rows.append({"measure": f"raw embed_batch, batch {batch}", **_pair(values)})
    for i, (crops, concurrency, _) in enumerate(plan):
        by_runtime = {r: points[r][i] for r in RUNTIMES}
        what = f"HTTP /query, {crops}-crop requests, concurrency {concurrency}"
        rows.append({"measure": what, **_pair({r: p.crops_per_s for r, p in by_runtime.items()})})
        p50 = {r: p.p50_ms for r, p in by_runtime.items()}
        rows.append({"measure": f"{what}: p50 latency ms", **_pair(p50)})  # type: ignore[arg-type]
    payload = {
        "benchmark": "runtime_compare",
        "quick": args.quick,
        "machine": machine_info(),
        "model": {
            "architecture": args.architecture if args.checkpoint is None else "from checkpoint",
            "checkpoint": args.checkpoint.name if args.checkpoint else "random init (seed 0)",
            "input_size": list(input_size),
        },
        "settings": {
            k: v for k, v in vars(args).items() if k not in ("out", "log_level", "checkpoint", "onnx_cache_dir")
        },
        "raw": raw,
        "points": {r: [asdict(p) for p in ps] for r, ps in points.items()},
        "rows": rows,
    }
    write_results(args.out, payload)
    print(
        markdown_table(
            ["measure", "torch", "onnxruntime", "onnxruntime / torch"],
            [(r["measure"], r["torch"], r["onnxruntime"], r["ratio"]) for r in rows],
        )
    )
    return 0


def _pair(values: dict[str, float | None]) -> dict[str, float | None]:
    torch_value, onnx_value = values["torch"], values["onnxruntime"]
    ratio = onnx_value / torch_value if torch_value and onnx_value is not None else None
    return {"torch": torch_value, "onnxruntime": onnx_value, "ratio": ratio}


if __name__ == "__main__":
    raise SystemExit(main())

"""What the default model costs to serve, next to OSNet-x0.25 alone: start-to-ready time and crops/s.

Both models are served the same way, one after the other, from one run: ONNX Runtime, one thread
(REID_RUNTIME=onnxruntime, REID_TORCH_THREADS=1), a real uvicorn process. Measured per model:

- start to ready: process start until /readyz answers 200, with the graph exported beforehand (as a clone that
  ships checkpoints/default.onnx, or a second start, finds it) and once more with an empty graph cache (the
  first start of a fresh clone without the graph: export + check + warm-up);
- raw crops/s of the service's Embedder (batch 32) and crops/s through POST /query with 32-crop requests.

The comparison model is OSNet-x0.25 at the default model's input size: ``--baseline`` (a checkpoint, e.g. the
pose ablation's variant (a)) or, without it, a random-initialised one (same cost as trained weights).

    .venv/bin/python -m benchmarks.default_model_cost --out benchmarks/results/default_model_cost.json
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.common import (
    REPO_ROOT,
    base_parser,
    ensure_repo_on_path,
    machine_info,
    markdown_table,
    setup_logging,
    write_results,
)

ensure_repo_on_path()

from benchmarks.service_load import bench_checkpoint, populate, raw_throughput, sweep  # noqa: E402
from model import read_checkpoint_spec  # noqa: E402
from tests.support.images import encode, player_crop  # noqa: E402
from tests.support.live_server import LiveServer, server_env  # noqa: E402

logger = logging.getLogger(__name__)

DEFAULT = REPO_ROOT / "checkpoints" / "default.safetensors"


def measure(checkpoint: Path, work: Path, name: str, payloads: list[bytes], duration: float,
            gallery: int) -> dict[str, Any]:
    """Cold start (empty graph cache), warm start (graph cached), raw and HTTP crops/s of one checkpoint."""
    cache = work / f"onnx-{name}"
    result: dict[str, Any] = {}
    for start in ("cold", "warm"):
        env = server_env(checkpoint, work / f"data-{name}-{start}", REID_MAX_BATCH_SIZE="32",
                         REID_WARMUP_BATCHES="2", REID_LOG_LEVEL="WARNING", REID_RUNTIME="onnxruntime",
                         REID_ONNX_CACHE_DIR=str(cache))
        server = LiveServer(env, log_path=work / f"server-{name}-{start}.log")
        server.start(wait=False)
        try:
            result[f"start_to_ready_s_{start}"] = server.wait_ready(timeout_s=900)
            if start == "warm":
                populate(server, payloads, gallery)
                (point,) = sweep(server, "batched", 32, payloads, [(32, 1, 0)], duration)
                result["http_32_crop_requests"] = asdict(point)
                result["http_crops_per_s"] = point.crops_per_s
        finally:
            server.stop()
    raw = raw_throughput(checkpoint, [32], 1, 4.0, "onnxruntime", cache)
    result["raw_crops_per_s_batch32"] = raw["per_batch_crops_per_s"]["32"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n\n")[0] if __doc__ else "", "default_model_cost.json")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT, help="the model to cost (default: the default)")
    parser.add_argument("--baseline", type=Path, default=None, help="OSNet-x0.25 checkpoint (default: random init)")
    parser.add_argument("--label", default="default", help="name of --checkpoint in the table")
    parser.add_argument("--baseline-label", default="osnet_x0_25")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of HTTP load per model")
    parser.add_argument("--gallery", type=int, default=64)
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    if args.quick:
        args.duration, args.gallery = 1.0, 8
    spec = read_checkpoint_spec(args.checkpoint)
    size = (spec.preprocess.height, spec.preprocess.width)
    payloads = [encode(player_crop(p, v), "JPEG", quality=90) for p in range(12) for v in range(6)]
    with tempfile.TemporaryDirectory(prefix="reid-default-cost-") as tmp:
        work = Path(tmp)
        baseline, _ = bench_checkpoint(args.baseline, work, "osnet_x0_25", size)
        models = {args.label: args.checkpoint, args.baseline_label: baseline}
        results = {name: measure(path, work, name, payloads, args.duration, args.gallery)
                   for name, path in models.items()}
    first, second = results[args.label], results[args.baseline_label]
    ratio = {
        key: first[key] / second[key]
        for key in ("raw_crops_per_s_batch32", "http_crops_per_s", "start_to_ready_s_cold", "start_to_ready_s_warm")
        if second.get(key)
    }
    rows = [
        [name, r["raw_crops_per_s_batch32"], r["http_crops_per_s"], r["start_to_ready_s_warm"],
         r["start_to_ready_s_cold"]]
        for name, r in results.items()
    ]
    rows.append([f"{args.label} / {args.baseline_label}", ratio.get("raw_crops_per_s_batch32"),
                 ratio.get("http_crops_per_s"), ratio.get("start_to_ready_s_warm"), ratio.get("start_to_ready_s_cold")])
    table = markdown_table(
        ["model (onnxruntime, 1 thread)", "raw crops/s (batch 32)",
         "HTTP crops/s (32-crop requests)", "start to ready, graph cached (s)", "start to ready, no graph (s)"],
        rows,
    )
    payload = {
        "benchmark": "default_model_cost",
        "quick": args.quick,
        "machine": machine_info(),
        "checkpoint": args.checkpoint.name,
        "labels": [args.label, args.baseline_label],
        "architecture": spec.architecture,
        "baseline": args.baseline.name if args.baseline else "osnet_x0_25 random init",
        "input_size": list(size),
        "results": results,
        "ratio_first_over_second": ratio,
        "table": table,
    }
    write_results(args.out, payload)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

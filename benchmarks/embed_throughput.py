"""Embedding throughput per architecture: crops/s of ``model.embed`` on uint8 (B, 3, 256, 128) input.

Random weights (throughput does not depend on them), eval mode, inference_mode, channels_last off/on. On CUDA it
adds bf16 autocast and, with --compile, torch.compile; on CPU those rows are only run when asked for.

    .venv/bin/python -m benchmarks.embed_throughput --out benchmarks/results/embed_throughput.json
    .venv/bin/python -m benchmarks.embed_throughput --device cuda --compile --batch 128   # on a GPU machine
    .venv/bin/python -m benchmarks.embed_throughput --runtime torch onnxruntime --threads 1 --out /tmp/embed_rt.json
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import (
    base_parser,
    ensure_repo_on_path,
    machine_info,
    markdown_table,
    setup_logging,
    write_results,
)

ensure_repo_on_path()

from model import ARCHITECTURES, ReIDModel, build_model  # noqa: E402

logger = logging.getLogger(__name__)

# pose_bilinear (VGG-19 pose stream + ResNet-50) is ~10x slower than resnet50 on CPU: smaller batches suffice.
SLOW_ARCHITECTURES = {"pose_bilinear": 8}


@dataclass
class ThroughputRow:
    runtime: str
    architecture: str
    device: str
    batch: int
    channels_last: bool
    autocast: str | None
    compiled: bool
    batches_timed: int
    crops_per_s: float  # best batch
    ms_per_batch: float  # best batch
    embedding_dim: int


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    model: torch.nn.Module,
    device: torch.device,
    batch: int,
    input_size: tuple[int, int],
    *,
    channels_last: bool,
    autocast: torch.dtype | None,
    min_batches: int,
    max_seconds: float,
) -> tuple[float, int]:
    """Seconds per batch (the fastest timed batch: the CPU is shared, so slower ones measure the neighbours)."""
    x = torch.randint(0, 256, (batch, 3, *input_size), dtype=torch.uint8, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ctx = (
        torch.autocast(device_type=device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()
    )
    with torch.inference_mode(), ctx:
        for _ in range(2):  # warm-up: allocator, kernel choice (and compilation)
            model.embed(x)
        _sync(device)
        times: list[float] = []
        deadline = time.perf_counter() + max_seconds
        while len(times) < min_batches or (time.perf_counter() < deadline and len(times) < 50):
            start = time.perf_counter()
            model.embed(x)
            _sync(device)
            times.append(time.perf_counter() - start)
    return min(times), len(times)


def measure_onnx(
    model: ReIDModel, batch: int, input_size: tuple[int, int], threads: int, min_batches: int, max_seconds: float
) -> tuple[float, int]:
    """Seconds per batch of the model's exported graph in onnxruntime on the CPU (fastest timed batch)."""
    import onnxruntime as ort

    from model.checkpoint import spec_for
    from model.export import INPUT_NAME, export_onnx

    with tempfile.TemporaryDirectory(prefix="reid-bench-onnx-") as tmp:
        graph = export_onnx(model, spec_for(model), Path(tmp) / "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).integers(0, 256, size=(batch, 3, *input_size), dtype=np.uint8)
    for _ in range(2):
        session.run(None, {INPUT_NAME: x})
    times: list[float] = []
    deadline = time.perf_counter() + max_seconds
    while len(times) < min_batches or (time.perf_counter() < deadline and len(times) < 50):
        start = time.perf_counter()
        session.run(None, {INPUT_NAME: x})
        times.append(time.perf_counter() - start)
    return min(times), len(times)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0], "embed_throughput.json")
    parser.add_argument("--architectures", nargs="+", default=sorted(ARCHITECTURES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--min-batches", type=int, default=2)
    parser.add_argument("--max-seconds", type=float, default=15.0, help="time budget per configuration")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile on CPU)")
    parser.add_argument("--bf16", action="store_true", help="also time bf16 autocast (default on CUDA only)")
    parser.add_argument(
        "--runtime",
        nargs="+",
        default=["torch"],
        choices=["torch", "onnxruntime"],
        help="onnxruntime: the exported graph (model/export.py) on the CPU, --threads intra-op threads",
    )
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    if args.quick:
        args.architectures, args.batch, args.height, args.width = ["osnet_x0_25"], 4, 64, 32
        args.min_batches, args.max_seconds, args.threads = 1, 0.5, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    input_size = (args.height, args.width)
    dtypes: list[torch.dtype | None] = [None]
    if device.type == "cuda" or args.bf16:
        dtypes.append(torch.bfloat16)

    rows: list[ThroughputRow] = []
    for name in args.architectures:
        batch = min(args.batch, SLOW_ARCHITECTURES.get(name, args.batch))
        torch.manual_seed(0)
        base = build_model(name, num_classes=0, input_size=input_size).eval().to(device)
        if "onnxruntime" in args.runtime:
            seconds, timed = measure_onnx(
                base, batch, input_size, args.threads or torch.get_num_threads(), args.min_batches, args.max_seconds
            )
            row = ThroughputRow(
                "onnxruntime", name, "cpu", batch, False, None, False, timed, batch / seconds, seconds * 1000,
                int(base.embedding_dim),
            )
            rows.append(row)
            logger.info("%s", row)
        if "torch" not in args.runtime:
            continue
        variants: list[tuple[bool, bool]] = [(False, False), (True, False)]
        if args.compile:
            variants += [(False, True), (True, True)]
        for channels_last, compiled in variants:
            model: Any = base.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            if compiled:
                model.embed = torch.compile(model.embed)
            for dtype in dtypes:
                seconds, timed = measure(
                    model, device, batch, input_size, channels_last=channels_last, autocast=dtype,
                    min_batches=args.min_batches, max_seconds=args.max_seconds,
                )
                row = ThroughputRow(
                    "torch", name, str(device), batch, channels_last, None if dtype is None else "bf16", compiled,
                    timed, batch / seconds, seconds * 1000, int(base.embedding_dim),
                )
                rows.append(row)
                logger.info("%s", row)
            if compiled:
                del model.embed  # back to the class method for the next variant
    payload = {
        "benchmark": "embed_throughput",
        "quick": args.quick,
        "machine": machine_info(),
        "input_size": list(input_size),
        "weights": "random (seed 0): throughput does not depend on the weights",
        "rows": [asdict(r) for r in rows],
    }
    write_results(args.out, payload)
    print(
        markdown_table(
            ["runtime", "architecture", "D", "device", "batch", "channels_last", "autocast", "compile", "crops/s",
             "ms/batch"],
            [
                (r.runtime, r.architecture, r.embedding_dim, r.device, r.batch, r.channels_last, r.autocast or "fp32",
                 r.compiled, r.crops_per_s, r.ms_per_batch)
                for r in rows
            ],
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

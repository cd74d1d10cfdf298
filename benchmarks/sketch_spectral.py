"""Tensor Sketch in ONNX Runtime on CPU: ONNX DFT ops ("fft") against DFT-as-matmul forms.

pose_bilinear's compact bilinear pooling needs a circular convolution; ``model.export`` can write it either way
("dft_matmul": count sketch then DFT matrices; "folded_matmul": the sketch folded into them; same numbers up
to rounding). This times the pooling alone, exported each way, at the shapes of a 256x128 crop:
appearance (B, 2048, 16, 8), parts (B, 128, 16, 8), D = 1024; best of --repeats runs per batch.

    .venv/bin/python -m benchmarks.sketch_spectral --out benchmarks/results/sketch_spectral.json
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from pathlib import Path

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

from model.bilinear import CompactBilinearPooling  # noqa: E402

logger = logging.getLogger(__name__)


def _export(pooling: CompactBilinearPooling, spectral: str, shapes: tuple[tuple[int, ...], ...], path: Path) -> None:
    pooling.set_spectral(spectral)
    examples = tuple(torch.randn(2, *shape[1:]) for shape in shapes)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            pooling,
            examples,
            None,
            input_names=["appearance", "parts"],
            output_names=["sketch"],
            opset_version=18,
            dynamo=True,
            dynamic_shapes={"appearance": {0: batch}, "parts": {0: batch}},
            verbose=False,
        )
    assert program is not None
    program.save(str(path))


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort

    parser = base_parser(__doc__.splitlines()[0], "sketch_spectral.json")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    if args.quick:
        args.batches, args.repeats = [2], 1
    torch.manual_seed(0)
    h, w, c_a, c_p = (4, 2, 64, 16) if args.quick else (16, 8, 2048, 128)
    pooling = CompactBilinearPooling(c_a, c_p, args.dim).eval()
    rows = []
    with tempfile.TemporaryDirectory(prefix="reid-sketch-") as tmp:
        sessions = {}
        for spectral in CompactBilinearPooling.SPECTRAL_MODES:
            path = Path(tmp) / f"{spectral}.onnx"
            _export(pooling, spectral, ((1, c_a, h, w), (1, c_p, h, w)), path)
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            sessions[spectral] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        for batch in args.batches:
            feeds = {
                "appearance": rng.standard_normal((batch, c_a, h, w), dtype=np.float32),
                "parts": rng.standard_normal((batch, c_p, h, w), dtype=np.float32),
            }
            outputs = {}
            # Interleaved, so both modes see the same neighbours on a shared CPU.
            best = {spectral: float("inf") for spectral in sessions}
            for _ in range(args.repeats + 1):
                for spectral, session in sessions.items():
                    start = time.perf_counter()
                    outputs[spectral] = session.run(None, feeds)[0]
                    best[spectral] = min(best[spectral], time.perf_counter() - start)
            scale = float(np.abs(outputs["fft"]).max())
            for spectral in sessions:
                difference = float(np.abs(outputs["fft"] - outputs[spectral]).max()) / scale
                rows.append(
                    {
                        "spectral": spectral,
                        "batch": batch,
                        "ms": best[spectral] * 1000,
                        "max_relative_difference_to_fft": difference,
                    }
                )
                logger.info("%s batch %d: %.2f ms", spectral, batch, best[spectral] * 1000)
    payload = {
        "benchmark": "sketch_spectral",
        "quick": args.quick,
        "machine": machine_info(),
        "shapes": {"appearance": [c_a, h, w], "parts": [c_p, h, w], "dim": args.dim},
        "threads": args.threads,
        "rows": rows,
    }
    write_results(args.out, payload)
    print(
        markdown_table(
            ["spectral", "batch", "ms (best)", "max |x - fft| / max |fft|"],
            [(r["spectral"], r["batch"], r["ms"], r["max_relative_difference_to_fft"]) for r in rows],
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

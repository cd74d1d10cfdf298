"""ONNX export of a re-id model's embedding path, shared by the service and ``reid-export --format onnx``.

The graph takes uint8 crops ``crops`` (B, 3, H, W) with a dynamic batch B and returns ``embeddings`` (B, D),
L2-normalised: scaling to [0, 1] and the mean/std normalisation stay inside the graph, exactly as in
``ReIDModel.embed``. The checkpoint's spec (the model card) travels as ONNX ``metadata_props``.

    model, spec = load_checkpoint("models/osnet.safetensors")
    export_onnx(model, spec, Path("models/osnet.onnx"), fingerprint=file_sha256("models/osnet.safetensors"))

Only torch is imported at module level: ``onnx`` (needed by torch's exporter) and ``onnxruntime`` (used to check
the written graph against torch) are imported inside the functions, so ``model`` works without them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.base import ReIDModel
from model.bilinear import CompactBilinearPooling
from model.checkpoint import METADATA_KEY, CheckpointSpec
from model.graph import (
    EXPORT_VERSION,
    EXPORT_VERSION_KEY,
    FINGERPRINT_KEY,
    INPUT_NAME,
    OUTPUT_NAME,
    SPECTRAL_KEY,
    spec_from_metadata,
)

logger = logging.getLogger(__name__)

# The graph's names and metadata keys live in model/graph.py (torch-free, read by the service); re-exported here.
__all__ = [
    "EXPORT_VERSION",
    "EXPORT_VERSION_KEY",
    "FINGERPRINT_KEY",
    "INPUT_NAME",
    "MIN_COSINE",
    "OPSET",
    "OUTPUT_NAME",
    "SPECTRAL_KEY",
    "OnnxExportError",
    "export_onnx",
    "graph_metadata",
    "read_onnx_metadata",
    "spec_from_metadata",
    "verify_onnx",
]

# DFT (used by pose_bilinear's Tensor Sketch when exported in "dft" form) needs opset >= 17.
OPSET = 18
# Minimum cosine between torch's and the graph's embeddings for a written graph to be accepted.
MIN_COSINE = 0.9999


class OnnxExportError(RuntimeError):
    """The model could not be exported, or the exported graph does not reproduce torch's embeddings."""


class EmbeddingGraph(nn.Module):
    """What gets exported: uint8 (B, 3, H, W) -> ``model.embed`` -> float32 (B, D), unit rows."""

    def __init__(self, model: ReIDModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.model.embed(crops)


def set_sketch_spectral(model: nn.Module, spectral: str) -> int:
    """Switch every Tensor Sketch in ``model`` to ``spectral`` ("fft" or "dft_matmul"); returns how many."""
    count = 0
    for module in model.modules():
        if isinstance(module, CompactBilinearPooling):
            module.set_spectral(spectral)
            count += 1
    return count


def graph_metadata(spec: CheckpointSpec, fingerprint: str | None, spectral: str) -> dict[str, str]:
    """The metadata_props an exported graph carries: the checkpoint spec (same JSON key as the checkpoint)."""
    meta = {
        METADATA_KEY: json.dumps(spec.as_dict(), sort_keys=True),
        EXPORT_VERSION_KEY: str(EXPORT_VERSION),
        SPECTRAL_KEY: spectral,
        "torch_version": torch.__version__,
    }
    if fingerprint:
        meta[FINGERPRINT_KEY] = fingerprint
    return meta


def export_onnx(
    model: ReIDModel,
    spec: CheckpointSpec,
    out: Path,
    *,
    fingerprint: str | None = None,
    spectral: str = "folded_matmul",
    verify: bool = True,
) -> Path:
    """Export ``model.embed`` to ``out`` (written atomically: temp file, check, rename).

    ``spectral`` picks how a Tensor Sketch (pose_bilinear) is written (see CompactBilinearPooling.SPECTRAL_MODES);
    the default, the count sketch folded into fixed DFT matrices, ran 1.3-1.6x faster than ONNX DFT ops in
    onnxruntime at batch 8-32 (benchmarks/sketch_spectral.py); other architectures ignore it. With ``verify``
    the written graph is run in onnxruntime on a batch size other than the traced one and must match torch
    (cosine >= MIN_COSINE), else OnnxExportError and nothing is left at ``out``.
    """
    out = Path(out)
    height, width = spec.preprocess.height, spec.preprocess.width
    model = model.eval()
    previous = [m.spectral for m in model.modules() if isinstance(m, CompactBilinearPooling)]
    set_sketch_spectral(model, spectral)
    graph = EmbeddingGraph(model).eval()
    generator = torch.Generator().manual_seed(0)
    # Batch 2 to trace: torch.export specialises sizes 0 and 1, so a traced 1 would fix the batch size.
    example = torch.randint(0, 256, (2, 3, height, width), dtype=torch.uint8, generator=generator)
    started = time.perf_counter()
    # Per-process temp name: two services starting on one cache folder each write their own, the rename is atomic.
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings(), _quiet_exporter():
            # The exporter warns about things that do not concern this graph (e.g. deprecated helpers it uses).
            warnings.simplefilter("ignore")
            program: Any = torch.onnx.export(
                graph,
                (example,),
                None,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=OPSET,
                dynamo=True,
                dynamic_shapes={"crops": {0: torch.export.Dim("batch", min=1, max=65_536)}},
                optimize=True,
                verbose=False,
            )
        proto = program.model_proto
        del proto.metadata_props[:]
        for key, value in graph_metadata(spec, fingerprint, spectral).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        _save_proto(proto, tmp)
        if verify:
            cosine = verify_onnx(model, tmp, (height, width))
            logger.info("exported graph matches torch: min cosine %.7f over a batch of 3", cosine)
        tmp.replace(out)
    except OnnxExportError:
        tmp.unlink(missing_ok=True)
        raise
    except Exception as exc:  # the exporter raises many error types; all mean "this model does not export"
        tmp.unlink(missing_ok=True)
        # Exporter messages run to pages (graphs, stack dumps): the first line names the cause, for one log line.
        logger.debug("ONNX export of %s failed", spec.architecture, exc_info=True)
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        raise OnnxExportError(f"{spec.architecture}: ONNX export failed: {type(exc).__name__}: {first_line}") from exc
    finally:
        for module, value in zip(
            (m for m in model.modules() if isinstance(m, CompactBilinearPooling)), previous, strict=True
        ):
            module.set_spectral(value)
    logger.info(
        "exported %s to ONNX (opset %d, %s) in %.1f s: %s",
        spec.architecture,
        OPSET,
        spectral,
        time.perf_counter() - started,
        out,
    )
    return out


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """torch's exporter logs each of its passes at INFO through onnxscript and onnx_ir (40-odd lines per
    export); nobody exporting a model or starting the service needs them. Warnings still show."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx", "torch.export")]
    previous = [target.level for target in loggers]
    for target in loggers:
        if target.getEffectiveLevel() < logging.WARNING:
            target.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for target, level in zip(loggers, previous, strict=True):
            target.setLevel(level)


def _save_proto(proto: Any, path: Path) -> None:
    import onnx

    # One self-contained file: every model here is far below protobuf's 2 GiB limit.
    onnx.save_model(proto, str(path), save_as_external_data=False)


def verify_onnx(model: ReIDModel, path: Path, input_size: tuple[int, int], batch: int = 3) -> float:
    """Min cosine of torch's and the graph's embeddings of ``batch`` random uint8 crops; raises below MIN_COSINE."""
    import numpy as np
    import onnxruntime as ort

    generator = torch.Generator().manual_seed(1)
    crops = torch.randint(0, 256, (batch, 3, *input_size), dtype=torch.uint8, generator=generator)
    with torch.inference_mode():
        expected = model.embed(crops).numpy()
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], {INPUT_NAME: crops.numpy()})[0]
    if got.shape != expected.shape:
        raise OnnxExportError(f"exported graph returns {got.shape}, torch {expected.shape}")
    cosine = float(
        np.min(np.sum(got * expected, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1))
    )
    if not np.isfinite(cosine) or cosine < MIN_COSINE:
        raise OnnxExportError(f"exported graph differs from torch: min cosine {cosine:.6f} < {MIN_COSINE}")
    return cosine


def read_onnx_metadata(path: Path) -> dict[str, str]:
    """metadata_props of an ONNX file as a dict (reads the whole file; onnx imported lazily)."""
    import onnx

    proto = onnx.load_model(str(path), load_external_data=False)
    return {entry.key: entry.value for entry in proto.metadata_props}

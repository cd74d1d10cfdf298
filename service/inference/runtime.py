"""Inference runtimes behind the Embedder: torch (eager) and ONNX Runtime, and the choice between them.

Both map uint8 crops (B, 3, H, W) to float32 embeddings (B, D) with unit rows; scaling and mean/std
normalisation happen inside the model (torch) or inside the exported graph (ONNX), never here.

    REID_RUNTIME=auto          # onnxruntime on the CPU when the architecture exports, torch on CUDA
    REID_RUNTIME=onnxruntime   # required: start-up fails when it cannot be used
    REID_RUNTIME=torch

The ONNX graph is exported from the checkpoint at start-up and cached as ``<cache>/<sha256>.v<N>.onnx`` (sha256 of
the checkpoint file, N = model.export.EXPORT_VERSION), so later starts load it in well under a second.
``onnxruntime`` is imported only when it is used: the torch runtime works without it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from model import CheckpointSpec, ReIDModel, load_checkpoint, read_checkpoint_spec
from model.device import autocast_for

logger = logging.getLogger(__name__)

RUNTIMES: tuple[str, ...] = ("auto", "torch", "onnxruntime")


class EmbeddingRuntime(Protocol):
    """What the Embedder needs from a runtime."""

    name: str

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """uint8 (B, 3, H, W), C-contiguous -> float32 (B, D), each row L2-normalised."""
        ...


class RuntimeUnavailable(RuntimeError):
    """The requested runtime cannot serve this checkpoint on this machine (the message says why)."""


class TorchRuntime:
    """Eager torch: channels_last on the CPU, bf16 autocast and pinned copies on CUDA."""

    name = "torch"

    def __init__(self, model: ReIDModel, device: torch.device, channels_last: bool | None = None) -> None:
        # channels_last (NHWC) convolutions ran 1.4-2x faster on CPU for every architecture in
        # benchmarks/embed_throughput.py; on CUDA it is left off until measured there (None = CPU only).
        self.channels_last = device.type == "cpu" if channels_last is None else channels_last
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = model.to(device).to(memory_format=memory_format).eval()
        self.device = device

    def embed(self, crops: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(crops)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        with torch.inference_mode(), autocast_for(self.device):
            embeddings = self.model.embed(batch)
        # Re-normalising in fp32 removes the small norm drift reduced-precision autocast leaves behind.
        embeddings = torch.nn.functional.normalize(embeddings.float(), dim=1)
        return embeddings.cpu().numpy().astype(np.float32, copy=False)


class OnnxRuntime:
    """An onnxruntime InferenceSession on the exported graph (uint8 ``crops`` in, ``embeddings`` out)."""

    name = "onnxruntime"

    def __init__(self, graph: Path, device: torch.device, threads: int | None, cache_dir: Path) -> None:
        import onnxruntime as ort

        from model.export import INPUT_NAME, OUTPUT_NAME

        self.input_name, self.output_name = INPUT_NAME, OUTPUT_NAME
        options = ort.SessionOptions()
        # REID_TORCH_THREADS bounds intra-op threads for either runtime; 0 lets onnxruntime use every core.
        options.intra_op_num_threads = threads or 0
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = execution_providers(device, cache_dir, ort.get_available_providers())
        try:
            self.session = ort.InferenceSession(str(graph), options, providers=providers)
        except Exception as exc:
            if device.type != "cuda" or providers[0][0] != "TensorrtExecutionProvider":
                raise
            # onnxruntime-gpu lists TensorRT even where the TensorRT libraries are missing: go on with CUDA.
            logger.warning("TensorRT provider failed (%s); using the CUDA provider", exc)
            self.session = ort.InferenceSession(str(graph), options, providers=providers[1:])
        self.providers = [p if isinstance(p, str) else p[0] for p in self.session.get_providers()]
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)

    def embed(self, crops: np.ndarray) -> np.ndarray:
        (embeddings,) = self.session.run([self.output_name], {self.input_name: crops})
        return np.asarray(embeddings, dtype=np.float32)


def execution_providers(device: torch.device, cache_dir: Path, available: list[str]) -> list[Any]:
    """CPU: the CPU provider. CUDA: TensorRT (engines cached next to the graph), then CUDA, then CPU for leftovers.

    Raises RuntimeUnavailable on a CUDA device when this onnxruntime build has no CUDA provider (install the
    ``gpu`` extra, which brings onnxruntime-gpu).
    """
    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in available:
        raise RuntimeUnavailable(
            f"onnxruntime has no CUDA provider here (available: {available}); install the gpu extra"
        )
    index = device.index or 0
    providers: list[Any] = []
    if "TensorrtExecutionProvider" in available:
        trt_cache = cache_dir / "tensorrt"
        trt_cache.mkdir(parents=True, exist_ok=True)
        providers.append(
            (
                "TensorrtExecutionProvider",
                {
                    "device_id": index,
                    "trt_fp16_enable": True,
                    "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": str(trt_cache),
                },
            )
        )
    providers.append(("CUDAExecutionProvider", {"device_id": index}))
    providers.append("CPUExecutionProvider")
    return providers


@dataclass
class LoadedRuntime:
    """The runtime chosen for a checkpoint, with the spec and why it was chosen (for /info and the log)."""

    runtime: EmbeddingRuntime
    spec: CheckpointSpec
    reason: str
    graph: Path | None = None


def cached_graph_path(cache_dir: Path, fingerprint: str) -> Path:
    from model.export import EXPORT_VERSION

    return cache_dir / f"{fingerprint}.v{EXPORT_VERSION}.onnx"


def load_runtime(
    checkpoint: Path,
    device: torch.device,
    requested: str,
    *,
    fingerprint: str,
    cache_dir: Path,
    threads: int | None = None,
) -> LoadedRuntime:
    """Build the runtime ``requested`` ("auto", "torch" or "onnxruntime") for ``checkpoint`` on ``device``.

    auto: torch on CUDA (onnxruntime there waits for the GPU check), onnxruntime on the CPU, falling back to torch
    (one warning saying why) when onnxruntime is missing or the architecture does not export. An explicit
    "onnxruntime" that cannot be served raises RuntimeUnavailable instead.
    """
    if requested not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {requested!r}")
    if requested == "torch":
        return _torch_runtime(checkpoint, device, "REID_RUNTIME=torch")
    if requested == "auto" and device.type == "cuda":
        return _torch_runtime(
            checkpoint, device, "auto on CUDA: torch (onnxruntime-gpu only with REID_RUNTIME=onnxruntime)"
        )
    try:
        return _onnx_runtime(checkpoint, device, requested, fingerprint, cache_dir, threads)
    except RuntimeUnavailable as exc:
        if requested == "onnxruntime":
            raise
        logger.warning("onnxruntime unavailable, serving with torch instead: %s", exc)
        return _torch_runtime(checkpoint, device, f"auto: fell back to torch ({exc})")


def _torch_runtime(checkpoint: Path, device: torch.device, reason: str) -> LoadedRuntime:
    model, spec = load_checkpoint(checkpoint, device="cpu")
    _check_input_size(checkpoint, model, spec)
    return LoadedRuntime(TorchRuntime(model, device), spec, reason)


def _check_input_size(checkpoint: Path, model: ReIDModel, spec: CheckpointSpec) -> None:
    if tuple(model.input_size) != (spec.preprocess.height, spec.preprocess.width):
        raise RuntimeError(
            f"checkpoint {checkpoint}: model input {model.input_size} != preprocess "
            f"({spec.preprocess.height}, {spec.preprocess.width})"
        )


def _onnx_runtime(
    checkpoint: Path, device: torch.device, requested: str, fingerprint: str, cache_dir: Path, threads: int | None
) -> LoadedRuntime:
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise RuntimeUnavailable(f"the onnxruntime package is not installed ({exc})") from exc
    from model.export import FINGERPRINT_KEY, OnnxExportError, export_onnx

    graph = cached_graph_path(cache_dir, fingerprint)
    how = "cached graph"
    spec = read_checkpoint_spec(checkpoint)
    runtime: OnnxRuntime | None = None
    if graph.is_file():
        try:
            runtime = OnnxRuntime(graph, device, threads, cache_dir)
            if runtime.metadata.get(FINGERPRINT_KEY) != fingerprint:
                raise ValueError(f"graph metadata names checkpoint {runtime.metadata.get(FINGERPRINT_KEY)!r}")
        except RuntimeUnavailable:
            raise
        except Exception as exc:  # a damaged or foreign file in the cache: export it again
            logger.warning("ignoring cached ONNX graph %s (%s); exporting again", graph, exc)
            runtime = None
    if runtime is None:
        model, spec = load_checkpoint(checkpoint, device="cpu")
        _check_input_size(checkpoint, model, spec)
        try:
            export_onnx(model, spec, graph, fingerprint=fingerprint)
        except OnnxExportError as exc:
            raise RuntimeUnavailable(f"{spec.architecture} does not export to ONNX: {exc}") from exc
        how = "exported at start-up"
        runtime = OnnxRuntime(graph, device, threads, cache_dir)
    threads_text = str(threads) if threads else "all cores"
    reason = (
        f"{'auto on CPU' if requested == 'auto' else 'REID_RUNTIME=onnxruntime'}: {how} ({fingerprint[:12]}), "
        f"providers {','.join(runtime.providers)}, {threads_text} intra-op threads"
    )
    return LoadedRuntime(runtime, spec, reason, graph)

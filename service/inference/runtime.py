"""Inference runtimes behind the Embedder: ONNX Runtime and torch (eager), and the choice between them.

Both map uint8 crops (B, 3, H, W) to float32 embeddings (B, D) with unit rows; scaling and mean/std
normalisation happen inside the exported graph (ONNX) or inside the model (torch), never here.

    REID_RUNTIME=auto          # onnxruntime on the CPU where a graph exists or the architecture exports, torch on CUDA
    REID_RUNTIME=onnxruntime   # required: start-up fails when it cannot be used
    REID_RUNTIME=torch

Where the graph comes from, first found wins: REID_CHECKPOINT names the graph itself (``x.onnx``, its checkpoint
``x.safetensors`` beside it is optional), or the checkpoint's graph beside it (``x.onnx``, what
``reid-export x.safetensors --format onnx`` writes), or the cache ``<cache>/<sha256>.v<N>.onnx`` (sha256 of the
checkpoint file, N = model.graph.EXPORT_VERSION), or an export at start-up into that cache (needs torch). A graph
is served only when the checkpoint fingerprint in its metadata is the sha256 of the checkpoint beside it.

The ONNX path imports no torch: the serving install (``serve`` extra) has onnxruntime and no torch at all, and
``torch`` is imported only to export a graph, to serve with the torch runtime, or to look for a GPU.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from model.commands import command
from model.graph import (
    CHECKPOINT_SUFFIX,
    EXPORT_VERSION,
    GRAPH_SUFFIX,
    INPUT_NAME,
    OUTPUT_NAME,
    GraphMetadataError,
    checkpoint_beside,
    fingerprint_from_metadata,
    graph_beside,
    read_graph_metadata,
    spec_from_metadata,
)
from model.spec import CheckpointSpec, file_sha256, read_checkpoint_spec

if TYPE_CHECKING:
    import torch

    from model.base import ReIDModel

logger = logging.getLogger(__name__)

RUNTIMES: tuple[str, ...] = ("auto", "torch", "onnxruntime")
# What a user without torch installs to get it: the full CPU install (make install in a checkout).
FULL_INSTALL = "make install (or: pip install -e '.[cpu]')"


def full_install_command(name: str) -> str:
    """A console script that needs torch, as a user can paste it: from this environment where it has torch,
    else from the full install's venv of a checkout (.venv, what make install creates)."""
    if torch_installed():
        return command(name)
    if Path("Makefile").is_file():
        return f"make install && .venv/bin/{name}"
    return f"{name}  (in an environment with pip install 'soccernet-reid[cpu]')"


class ServingSetupError(RuntimeError):
    """The model cannot be served with what is installed or given; the message says what to install or run.

    reid-serve prints it as it is, without a traceback.
    """


@dataclass(frozen=True)
class ServingDevice:
    """Where inference runs: ``cpu`` or ``cuda`` with an index; torch-free (str() gives "cpu" or "cuda:N")."""

    type: str
    index: int | None = None

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"


def torch_installed() -> bool:
    """Whether torch can be imported here, answered without importing it."""
    return "torch" in sys.modules or importlib.util.find_spec("torch") is not None


def resolve_serving_device(name: str) -> ServingDevice:
    """REID_DEVICE -> a device. ``cpu`` never imports torch; ``auto`` asks torch for a GPU where torch is installed
    (the CPU otherwise); ``cuda[:N]`` is validated by torch where installed (else onnxruntime-gpu must serve it).
    """
    if name == "cpu":
        return ServingDevice("cpu")
    if not torch_installed():
        if name == "auto":
            return ServingDevice("cpu")
        index = int(name.partition(":")[2] or 0)
        return ServingDevice("cuda", index)
    from model.device import resolve_device

    device = resolve_device(name)
    return ServingDevice(device.type, device.index)


def _torch_device(device: ServingDevice) -> torch.device:
    import torch

    return torch.device(str(device))


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

    def __init__(self, model: ReIDModel, device: ServingDevice, channels_last: bool | None = None) -> None:
        import torch

        # channels_last (NHWC) convolutions ran 1.4-2x faster on CPU for every architecture in
        # benchmarks/embed_throughput.py; on CUDA it is left off until measured there (None = CPU only).
        self.channels_last = device.type == "cpu" if channels_last is None else channels_last
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.device = _torch_device(device)
        self.model = model.to(self.device).to(memory_format=memory_format).eval()

    def embed(self, crops: np.ndarray) -> np.ndarray:
        import torch

        from model.device import autocast_for

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

    def __init__(self, graph: Path, device: ServingDevice, threads: int | None, cache_dir: Path) -> None:
        import onnxruntime as ort

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


def execution_providers(device: ServingDevice, cache_dir: Path, available: list[str]) -> list[Any]:
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
    """The runtime chosen for a model, with its spec, fingerprint and why it was chosen (for /info and the log)."""

    runtime: EmbeddingRuntime
    spec: CheckpointSpec
    reason: str
    fingerprint: str
    graph: Path | None = None


@dataclass(frozen=True)
class ModelFiles:
    """What REID_CHECKPOINT points at: a checkpoint and/or the graph that travels with it.

    checkpoint: the .safetensors (None when only a graph was given and nothing lies beside it).
    graph: a shipped graph (REID_CHECKPOINT itself when it ends in .onnx, else the .onnx beside the checkpoint).
    """

    checkpoint: Path | None
    graph: Path | None

    @property
    def name(self) -> Path:
        found = self.checkpoint or self.graph
        assert found is not None
        return found


def locate_model(path: Path) -> ModelFiles:
    """Pair REID_CHECKPOINT with the file that travels with it; raises ServingSetupError when neither exists."""
    path = Path(path)
    if path.suffix == GRAPH_SUFFIX:
        if not path.is_file():
            raise ServingSetupError(f"REID_CHECKPOINT={path} does not exist")
        beside = checkpoint_beside(path)
        return ModelFiles(beside if beside.is_file() else None, path)
    if not path.is_file():
        raise ServingSetupError(f"REID_CHECKPOINT={path} does not exist")
    beside = graph_beside(path)
    return ModelFiles(path, beside if beside.is_file() and path.suffix == CHECKPOINT_SUFFIX else None)


def _no_graph_message(checkpoint: Path) -> str:
    graph = graph_beside(checkpoint)
    return (
        f"{checkpoint} has no ONNX graph beside it ({graph}) and none is cached, and this install has no torch to "
        "export one. Either export the graph once with the full install:\n"
        f"    {full_install_command('reid-export')} {checkpoint} --format onnx\n"
        f"(it writes {graph}), then start again with the two files side by side; or install torch here to serve "
        f"the checkpoint as it is: {FULL_INSTALL}"
    )


def _mismatch_message(graph: Path, graph_fingerprint: str, checkpoint: Path | None, fingerprint: str) -> str:
    return (
        f"{graph} was exported from another checkpoint (sha256 {graph_fingerprint[:12]}...) than the {checkpoint} "
        f"beside it ({fingerprint[:12]}...); export the pair again with the full install:\n"
        f"    {full_install_command('reid-export')} {checkpoint} --format onnx"
    )


def check_servable(path: Path, requested: str, cache_dir: Path) -> tuple[ModelFiles, str]:
    """What ``load_runtime`` would refuse for lack of a file, of torch, of onnxruntime or of a matching graph,
    found in milliseconds (no model is loaded): the files and the model's fingerprint, else ServingSetupError."""
    files = locate_model(path)
    graph_fingerprint = None
    if files.graph is not None:
        try:
            graph_fingerprint = fingerprint_from_metadata(read_graph_metadata(files.graph), str(files.graph))
        except GraphMetadataError as exc:
            raise ServingSetupError(str(exc)) from exc
    fingerprint = file_sha256(files.checkpoint) if files.checkpoint is not None else graph_fingerprint
    assert fingerprint is not None
    if files.graph is not None and graph_fingerprint != fingerprint:
        assert graph_fingerprint is not None
        raise ServingSetupError(_mismatch_message(files.graph, graph_fingerprint, files.checkpoint, fingerprint))
    has_torch = torch_installed()
    has_onnxruntime = importlib.util.find_spec("onnxruntime") is not None
    if requested == "torch":
        if files.checkpoint is None:
            raise ServingSetupError(
                f"REID_RUNTIME=torch needs the checkpoint {checkpoint_beside(files.name)} beside the graph "
                f"{files.name}; serve the graph with REID_RUNTIME=auto instead"
            )
        if not has_torch:
            raise ServingSetupError(
                f"REID_RUNTIME=torch needs torch, which this install does not have: serve the ONNX graph "
                f"(REID_RUNTIME=auto) or install torch with the full install: {FULL_INSTALL}"
            )
        return files, fingerprint
    if not has_onnxruntime and (files.checkpoint is None or not has_torch or requested == "onnxruntime"):
        raise ServingSetupError(
            f"serving {files.name} needs onnxruntime, which is not installed: pip install -e '.[serve]'"
        )
    if files.graph is None and not has_torch and not cached_graph_path(cache_dir, fingerprint).is_file():
        assert files.checkpoint is not None
        raise ServingSetupError(_no_graph_message(files.checkpoint))
    return files, fingerprint


def cached_graph_path(cache_dir: Path, fingerprint: str) -> Path:
    return cache_dir / f"{fingerprint}.v{EXPORT_VERSION}.onnx"


def load_runtime(
    checkpoint: Path,
    device: ServingDevice,
    requested: str,
    *,
    fingerprint: str | None = None,
    cache_dir: Path,
    threads: int | None = None,
) -> LoadedRuntime:
    """Build the runtime ``requested`` ("auto", "torch" or "onnxruntime") for ``checkpoint`` (a .safetensors or
    a .onnx, see the module docstring) on ``device``.

    auto: torch on CUDA (onnxruntime there waits for the GPU check), onnxruntime on the CPU, falling back to torch
    (one warning saying why) when onnxruntime is missing or the architecture does not export. An explicit
    "onnxruntime" that cannot be served raises RuntimeUnavailable instead. ``fingerprint`` is the checkpoint's
    sha256 when the caller has it already. ServingSetupError when what is installed cannot serve what was given.
    """
    if requested not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {requested!r}")
    files = locate_model(checkpoint)
    if files.checkpoint is not None and fingerprint is None:
        fingerprint = file_sha256(files.checkpoint)
    if requested == "torch":
        return _torch_runtime(files, device, "REID_RUNTIME=torch", fingerprint)
    if requested == "auto" and device.type == "cuda" and torch_installed() and files.checkpoint is not None:
        return _torch_runtime(
            files, device, "auto on CUDA: torch (onnxruntime-gpu only with REID_RUNTIME=onnxruntime)", fingerprint
        )
    try:
        return _onnx_runtime(files, device, requested, fingerprint, cache_dir, threads)
    except RuntimeUnavailable as exc:
        if requested == "onnxruntime" or files.checkpoint is None or not torch_installed():
            raise
        logger.warning("onnxruntime unavailable, serving with torch instead: %s", exc)
        return _torch_runtime(files, device, f"auto: fell back to torch ({exc})", fingerprint)


def _torch_runtime(files: ModelFiles, device: ServingDevice, reason: str, fingerprint: str | None) -> LoadedRuntime:
    if files.checkpoint is None:
        raise ServingSetupError(
            f"the torch runtime needs the checkpoint {checkpoint_beside(files.name)} beside the graph {files.name}; "
            "serve the graph with REID_RUNTIME=auto or onnxruntime instead"
        )
    if not torch_installed():
        raise ServingSetupError(
            f"{reason} needs torch, which this install does not have: serve the ONNX graph instead "
            f"(REID_RUNTIME=auto) or install torch with the full install: {FULL_INSTALL}"
        )
    from model.checkpoint import load_checkpoint

    model, spec = load_checkpoint(files.checkpoint, device="cpu")
    _check_input_size(files.checkpoint, model, spec)
    return LoadedRuntime(TorchRuntime(model, device), spec, reason, fingerprint or file_sha256(files.checkpoint))


def _check_input_size(checkpoint: Path, model: ReIDModel, spec: CheckpointSpec) -> None:
    if tuple(model.input_size) != (spec.preprocess.height, spec.preprocess.width):
        raise RuntimeError(
            f"checkpoint {checkpoint}: model input {model.input_size} != preprocess "
            f"({spec.preprocess.height}, {spec.preprocess.width})"
        )


def _shipped_graph(
    files: ModelFiles, device: ServingDevice, fingerprint: str | None, cache_dir: Path, threads: int | None
) -> tuple[OnnxRuntime, CheckpointSpec, str]:
    """Open the graph that travels with the checkpoint; its metadata must name the checkpoint beside it."""
    graph = files.graph
    assert graph is not None
    try:
        runtime = OnnxRuntime(graph, device, threads, cache_dir)
    except RuntimeUnavailable:
        raise
    except Exception as exc:  # onnxruntime raises its own error types for damaged or foreign files
        raise ServingSetupError(f"{graph} is not a readable ONNX graph ({type(exc).__name__}: {exc})") from exc
    try:
        graph_fingerprint = fingerprint_from_metadata(runtime.metadata, str(graph))
        spec = spec_from_metadata(runtime.metadata, str(graph))
    except GraphMetadataError as exc:
        raise ServingSetupError(str(exc)) from exc
    if fingerprint is not None and graph_fingerprint != fingerprint:
        raise ServingSetupError(_mismatch_message(graph, graph_fingerprint, files.checkpoint, fingerprint))
    return runtime, spec, graph_fingerprint


def _onnx_runtime(
    files: ModelFiles,
    device: ServingDevice,
    requested: str,
    fingerprint: str | None,
    cache_dir: Path,
    threads: int | None,
) -> LoadedRuntime:
    if importlib.util.find_spec("onnxruntime") is None:
        if files.checkpoint is None or not torch_installed():
            raise ServingSetupError(
                f"serving {files.name} needs onnxruntime, which is not installed: pip install -e '.[serve]'"
            )
        raise RuntimeUnavailable("the onnxruntime package is not installed")
    runtime: OnnxRuntime | None = None
    if files.graph is not None:
        runtime, spec, fingerprint = _shipped_graph(files, device, fingerprint, cache_dir, threads)
        graph, how = files.graph, f"shipped graph {files.graph.name}"
    else:
        assert files.checkpoint is not None and fingerprint is not None
        checkpoint = files.checkpoint
        graph, how = cached_graph_path(cache_dir, fingerprint), "cached graph"
        spec = read_checkpoint_spec(checkpoint)
        if graph.is_file():
            try:
                runtime = OnnxRuntime(graph, device, threads, cache_dir)
                if fingerprint_from_metadata(runtime.metadata, str(graph)) != fingerprint:
                    raise ValueError("its metadata names another checkpoint")
            except RuntimeUnavailable:
                raise
            except Exception as exc:  # a damaged or foreign file in the cache: export it again
                logger.warning("ignoring cached ONNX graph %s (%s); exporting again", graph, exc)
                runtime = None
        if runtime is None:
            runtime = _export_into_cache(checkpoint, spec, graph, fingerprint, device, threads, cache_dir)
            how = "exported at start-up"
    threads_text = str(threads) if threads else "all cores"
    reason = (
        f"{'auto on CPU' if requested == 'auto' else 'REID_RUNTIME=onnxruntime'}: {how} ({fingerprint[:12]}), "
        f"providers {','.join(runtime.providers)}, {threads_text} intra-op threads"
    )
    return LoadedRuntime(runtime, spec, reason, fingerprint, graph)


def _export_into_cache(
    checkpoint: Path,
    spec: CheckpointSpec,
    graph: Path,
    fingerprint: str,
    device: ServingDevice,
    threads: int | None,
    cache_dir: Path,
) -> OnnxRuntime:
    """Export the checkpoint's graph into the cache (torch needed); ServingSetupError without torch."""
    if not torch_installed():
        raise ServingSetupError(_no_graph_message(checkpoint))
    from model.checkpoint import load_checkpoint
    from model.export import OnnxExportError, export_onnx

    logger.info(
        "exporting the ONNX graph of %s into %s: once per checkpoint, 10-40 s on a CPU (a graph shipped beside "
        "the checkpoint, as reid-export --format onnx writes it, skips this)",
        checkpoint,
        graph,
    )
    model, spec = load_checkpoint(checkpoint, device="cpu")
    _check_input_size(checkpoint, model, spec)
    try:
        export_onnx(model, spec, graph, fingerprint=fingerprint)
    except OnnxExportError as exc:
        raise RuntimeUnavailable(f"{spec.architecture} does not export to ONNX: {exc}") from exc
    return OnnxRuntime(graph, device, threads, cache_dir)


"""The model behind the service: checkpoint loading, runtime choice (service/inference/runtime.py), warm-up,
batched embedding.

``Embedder.embed_batch`` maps uint8 crops (B, 3, H, W) to L2-normalised float32 embeddings (B, D).
It is called from exactly one thread (the batcher's worker), so it needs no lock of its own.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.spec import CheckpointSpec
from service.inference.runtime import EmbeddingRuntime, ServingDevice, load_runtime, resolve_serving_device

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbedderInfo:
    """What /info reports about the loaded model."""

    checkpoint: str
    device: str
    autocast: str | None
    spec: CheckpointSpec
    runtime: str
    runtime_reason: str


class Embedder:
    """Owns the model (through a runtime) on its device; turns uint8 crops (B, 3, H, W) into unit embeddings (B, D)."""

    def __init__(
        self,
        runtime: EmbeddingRuntime,
        spec: CheckpointSpec,
        device: ServingDevice,
        checkpoint: str = "",
        runtime_reason: str = "",
        fingerprint: str = "",
    ) -> None:
        self.runtime = runtime
        self.runtime_reason = runtime_reason or runtime.name
        self.spec = spec
        self.device = device
        self.checkpoint = checkpoint
        # sha256 of the checkpoint file (from the graph's metadata when only the graph was given): the model's
        # identity for the gallery and the ONNX cache.
        self.fingerprint = fingerprint
        self.input_size: tuple[int, int] = (spec.preprocess.height, spec.preprocess.width)
        self.embedding_dim = int(spec.embedding_dim)
        # What autocast_for uses on this device under torch, reported by /info.
        self._autocast = "bfloat16" if device.type == "cuda" and runtime.name == "torch" else None

    @classmethod
    def from_checkpoint(
        cls,
        path: Path,
        device_name: str = "auto",
        runtime: str = "torch",
        *,
        fingerprint: str | None = None,
        cache_dir: Path | None = None,
        threads: int | None = None,
    ) -> Embedder:
        """Load ``path`` (a .safetensors checkpoint, or the .onnx graph that travels with it) with ``runtime``
        (auto | torch | onnxruntime, see service/inference/runtime.py) on the device.

        ``fingerprint`` (sha256 of the checkpoint, computed when not given) and ``cache_dir`` (the service passes
        REID_ONNX_CACHE_DIR, default: the user's cache folder) locate a cached ONNX graph; torch needs neither.
        """
        device = resolve_serving_device(device_name)
        if runtime != "torch" and cache_dir is None:
            raise ValueError(f"runtime {runtime!r} needs a cache_dir for the exported graph")
        loaded = load_runtime(
            path, device, runtime, fingerprint=fingerprint, cache_dir=cache_dir or Path("."), threads=threads
        )
        spec = loaded.spec
        logger.info(
            "loaded %s (%s, dim %d) on %s; runtime %s (%s)",
            path,
            spec.architecture,
            spec.embedding_dim,
            device,
            loaded.runtime.name,
            loaded.reason,
        )
        return cls(
            loaded.runtime,
            spec,
            device,
            checkpoint=str(path),
            runtime_reason=loaded.reason,
            fingerprint=loaded.fingerprint,
        )

    @property
    def info(self) -> EmbedderInfo:
        return EmbedderInfo(
            checkpoint=self.checkpoint,
            device=str(self.device),
            autocast=self._autocast,
            spec=self.spec,
            runtime=self.runtime.name,
            runtime_reason=self.runtime_reason,
        )

    def embed_batch(self, crops: np.ndarray) -> np.ndarray:
        """uint8 (B, 3, H, W) -> float32 (B, D), each row L2-normalised."""
        if crops.ndim != 4 or crops.shape[1:] != (3, *self.input_size):
            raise ValueError(f"expected crops (B, 3, {self.input_size[0]}, {self.input_size[1]}), got {crops.shape}")
        if crops.dtype != np.uint8:
            raise ValueError(f"expected uint8 crops, got {crops.dtype}")
        return self.runtime.embed(np.ascontiguousarray(crops))

    def warm_up(self, batch_sizes: list[int]) -> float:
        """Run dummy batches so the first real request does not pay for kernel selection; returns seconds."""
        start = time.perf_counter()
        rng = np.random.default_rng(0)
        for size in batch_sizes:
            dummy = rng.integers(0, 256, size=(size, 3, *self.input_size), dtype=np.uint8)
            self.embed_batch(dummy)
        if self.device.type == "cuda" and self.runtime.name == "torch":
            import torch

            torch.cuda.synchronize(torch.device(str(self.device)))
        elapsed = time.perf_counter() - start
        logger.info("warm-up with batch sizes %s took %.2f s", batch_sizes, elapsed)
        return elapsed

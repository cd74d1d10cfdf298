"""The model behind the service: checkpoint loading, device placement, warm-up and batched embedding.

``Embedder.embed_batch`` maps uint8 crops (B, 3, H, W) to L2-normalised float32 embeddings (B, D).
It is called from exactly one thread (the batcher's worker), so it needs no lock of its own.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model import CheckpointSpec, ReIDModel, load_checkpoint
from model.device import autocast_for, resolve_device

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbedderInfo:
    """What /info reports about the loaded model."""

    checkpoint: str
    device: str
    autocast: str | None
    spec: CheckpointSpec


class Embedder:
    """Owns the model on its device; turns uint8 crops (B, 3, H, W) into unit embeddings (B, D)."""

    def __init__(
        self,
        model: ReIDModel,
        spec: CheckpointSpec,
        device: torch.device,
        checkpoint: str = "",
        channels_last: bool | None = None,
    ) -> None:
        # channels_last (NHWC) convolutions ran 1.4-2x faster on CPU for every architecture in
        # benchmarks/embed_throughput.py; on CUDA it is left off until measured there (None = CPU only).
        self.channels_last = device.type == "cpu" if channels_last is None else channels_last
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = model.to(device).to(memory_format=memory_format).eval()
        self.spec = spec
        self.device = device
        self.checkpoint = checkpoint
        self.input_size: tuple[int, int] = (spec.preprocess.height, spec.preprocess.width)
        self.embedding_dim = int(spec.embedding_dim)
        # What autocast_for uses on this device, reported by /info.
        self._autocast_dtype = torch.bfloat16 if device.type == "cuda" else None

    @classmethod
    def from_checkpoint(cls, path: Path, device_name: str = "auto") -> Embedder:
        device = resolve_device(device_name)
        model, spec = load_checkpoint(path, device="cpu")
        if tuple(model.input_size) != (spec.preprocess.height, spec.preprocess.width):
            raise RuntimeError(
                f"checkpoint {path}: model input {model.input_size} != preprocess "
                f"({spec.preprocess.height}, {spec.preprocess.width})"
            )
        logger.info("loaded %s (%s, dim %d) on %s", path, spec.architecture, spec.embedding_dim, device)
        return cls(model, spec, device, checkpoint=str(path))

    @property
    def info(self) -> EmbedderInfo:
        autocast = str(self._autocast_dtype).removeprefix("torch.") if self._autocast_dtype else None
        return EmbedderInfo(checkpoint=self.checkpoint, device=str(self.device), autocast=autocast, spec=self.spec)

    def embed_batch(self, crops: np.ndarray) -> np.ndarray:
        """uint8 (B, 3, H, W) -> float32 (B, D), each row L2-normalised."""
        if crops.ndim != 4 or crops.shape[1:] != (3, *self.input_size):
            raise ValueError(f"expected crops (B, 3, {self.input_size[0]}, {self.input_size[1]}), got {crops.shape}")
        batch = torch.from_numpy(np.ascontiguousarray(crops))
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        with torch.inference_mode(), autocast_for(self.device):
            embeddings = self.model.embed(batch)
        embeddings = embeddings.float()
        # Re-normalising in fp32 removes the small norm drift reduced-precision autocast leaves behind.
        embeddings = torch.nn.functional.normalize(embeddings, dim=1)
        return embeddings.cpu().numpy().astype(np.float32, copy=False)

    def warm_up(self, batch_sizes: list[int]) -> float:
        """Run dummy batches so the first real request does not pay for kernel selection; returns seconds."""
        start = time.perf_counter()
        rng = np.random.default_rng(0)
        for size in batch_sizes:
            dummy = rng.integers(0, 256, size=(size, 3, *self.input_size), dtype=np.uint8)
            self.embed_batch(dummy)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - start
        logger.info("warm-up with batch sizes %s took %.2f s", batch_sizes, elapsed)
        return elapsed

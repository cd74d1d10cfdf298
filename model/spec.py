"""The checkpoint's spec and fingerprint, readable without torch: what the serving install (``serve`` extra) needs.

    spec = read_checkpoint_spec("checkpoints/default.safetensors")   # metadata only, no tensors loaded
    fingerprint = file_sha256("checkpoints/default.safetensors")      # the model's identity (gallery, ONNX cache)

Torch-free: the standard library and safetensors' header reader only. model/checkpoint.py (torch)
writes and loads whole checkpoints and re-exports these names.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.thresholds import parse_buckets

logger = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
DEFAULT_INPUT_SIZE: tuple[int, int] = (256, 128)


@dataclass(frozen=True)
class Preprocess:
    """How a crop becomes model input: resize to (height, width), scale to [0, 1], then (x - mean) / std."""

    height: int
    width: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def as_dict(self) -> dict[str, Any]:
        return {"height": self.height, "width": self.width, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        mean, std = tuple(float(v) for v in data["mean"]), tuple(float(v) for v in data["std"])
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"preprocess mean/std must have 3 values, got {mean} / {std}")
        return cls(int(data["height"]), int(data["width"]), mean, std)


FORMAT_VERSION = 1
METADATA_KEY = "soccernet_reid"


class CheckpointError(ValueError):
    """The file is not a checkpoint of this project, is damaged, or was written by a newer format version."""


@dataclass(frozen=True)
class CheckpointSpec:
    """Everything needed to rebuild and serve a model, read from a checkpoint's metadata."""

    format_version: int
    architecture: str
    model_config: dict[str, Any]
    preprocess: Preprocess
    embedding_dim: int
    threshold: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    train_meta: dict[str, Any] = field(default_factory=dict)
    # Per query size bucket ("1", "2-4", "5+"); `threshold` stays the value for any size no bucket covers.
    thresholds: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "architecture": self.architecture,
            "model_config": self.model_config,
            "preprocess": self.preprocess.as_dict(),
            "embedding_dim": self.embedding_dim,
            "threshold": self.threshold,
            "thresholds": self.thresholds,
            "metrics": self.metrics,
            "train_meta": self.train_meta,
            "provenance": self.provenance,
            "calibration": self.calibration,
        }

    def calibration_card(self) -> dict[str, Any] | None:
        """The model card of the stored threshold: reid-calibrate's ``calibration``, else the one training wrote
        into ``metrics`` (best F1 on the run's validation split); None when the threshold comes with no record."""
        if self.calibration:
            return dict(self.calibration)
        trained = self.metrics.get("calibration")
        if isinstance(trained, dict) and trained.get("threshold") is not None:
            return {"objective": "best F1 on the training run's validation split (reid-train)", **trained}
        return None

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "checkpoint") -> CheckpointSpec:
        if not isinstance(data, dict):
            raise CheckpointError(f"{source}: metadata is not a JSON object")
        version = data.get("format_version")
        if not isinstance(version, int):
            raise CheckpointError(f"{source}: format_version missing or not an integer ({version!r})")
        if version > FORMAT_VERSION:
            raise CheckpointError(
                f"{source}: written with checkpoint format {version}, this code reads up to {FORMAT_VERSION}; "
                "upgrade the package"
            )
        required = ("architecture", "model_config", "preprocess", "embedding_dim")
        missing = [key for key in required if key not in data]
        if missing:
            raise CheckpointError(f"{source}: metadata lacks {missing}")
        threshold = data.get("threshold")
        try:
            return cls(
                format_version=version,
                architecture=str(data["architecture"]),
                model_config=dict(data["model_config"]),
                preprocess=Preprocess.from_dict(data["preprocess"]),
                embedding_dim=int(data["embedding_dim"]),
                threshold=None if threshold is None else float(threshold),
                metrics=dict(data.get("metrics") or {}),
                train_meta=dict(data.get("train_meta") or {}),
                thresholds=parse_buckets(data.get("thresholds") or {}),
                provenance=dict(data.get("provenance") or {}),
                calibration=dict(data.get("calibration") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: malformed metadata: {exc}") from exc


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file read in 1 MiB chunks: a checkpoint's fingerprint (gallery store, ONNX graph cache)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_checkpoint_spec(path: str | Path) -> CheckpointSpec:
    """Only the metadata of a checkpoint; raises CheckpointError for anything that is not a valid one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        from safetensors import safe_open

        # framework="numpy": reading the header needs neither torch nor any tensor.
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for damaged headers
        raise CheckpointError(f"{path}: not a readable .safetensors file ({exc})") from exc
    if METADATA_KEY not in metadata:
        raise CheckpointError(f"{path}: a .safetensors file, but not a checkpoint of this project (no spec)")
    try:
        data = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: spec is not valid JSON ({exc})") from exc
    return CheckpointSpec.from_dict(data, source=str(path))

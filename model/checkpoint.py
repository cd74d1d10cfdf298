"""The checkpoint format: one .safetensors file, weights plus a JSON spec in its metadata. No pickle anywhere.

    save_checkpoint(model, "runs/x/model.safetensors", threshold=0.62, metrics={"mAP": 0.81})
    model, spec = load_checkpoint("runs/x/model.safetensors", device="cuda:0")

The spec (``CheckpointSpec``) holds format_version, architecture, model_config (the build_model kwargs),
preprocess (input size, mean, std), embedding_dim, threshold (calibrated cosine threshold or None), thresholds
(optional calibrated thresholds per query size bucket, e.g. {"1": 0.70, "2-4": 0.75, "5+": 0.75}, see
model/thresholds.py), metrics, train_meta, provenance (where pretrained weights came from: source URL, sha256,
licences, training data; empty for models trained here) and calibration (the model card of the threshold:
objective, data, measured precision / recall; written by reid-calibrate). Files without thresholds, provenance or
calibration read them as {}, so older checkpoints stay valid and older code ignores the keys. Training resume
state (optimizer, epoch) lives in a separate file owned by training/.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from model.base import Preprocess, ReIDModel
from model.thresholds import parse_buckets

logger = logging.getLogger(__name__)

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


def spec_for(
    model: ReIDModel,
    threshold: float | None = None,
    metrics: dict[str, Any] | None = None,
    train_meta: dict[str, Any] | None = None,
    thresholds: dict[str, float] | None = None,
    provenance: dict[str, Any] | None = None,
    calibration: dict[str, Any] | None = None,
) -> CheckpointSpec:
    """The spec a checkpoint of ``model`` gets; preprocess comes from the model itself so it cannot diverge."""
    return CheckpointSpec(
        format_version=FORMAT_VERSION,
        architecture=model.architecture,
        model_config=dict(model.config),
        preprocess=model.preprocess,
        embedding_dim=model.embedding_dim,
        threshold=threshold,
        metrics=dict(metrics or {}),
        train_meta=dict(train_meta or {}),
        thresholds=parse_buckets(thresholds or {}),
        provenance=dict(provenance or {}),
        calibration=dict(calibration or {}),
    )


def save_checkpoint(
    model: ReIDModel,
    path: str | Path,
    *,
    threshold: float | None = None,
    metrics: dict[str, Any] | None = None,
    train_meta: dict[str, Any] | None = None,
    thresholds: dict[str, float] | None = None,
    provenance: dict[str, Any] | None = None,
    calibration: dict[str, Any] | None = None,
) -> CheckpointSpec:
    """Write ``model``'s weights and spec to one .safetensors file (atomically: temp file + rename).

    ``thresholds`` optionally maps query size buckets to calibrated thresholds (model/thresholds.py).
    """
    path = Path(path)
    spec = spec_for(model, threshold, metrics, train_meta, thresholds, provenance, calibration)
    metadata = {METADATA_KEY: json.dumps(spec.as_dict(), sort_keys=True)}
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(state, str(tmp), metadata=metadata)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.info("saved %s checkpoint (%d tensors) to %s", spec.architecture, len(state), path)
    return spec


def read_checkpoint_spec(path: str | Path) -> CheckpointSpec:
    """Only the metadata of a checkpoint; raises CheckpointError for anything that is not a valid one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
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


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[ReIDModel, CheckpointSpec]:
    """Rebuild the model from the spec, load every tensor strictly, move it to ``device``, eval mode."""
    from model.factory import build_model

    spec = read_checkpoint_spec(path)
    try:
        model = build_model(spec.architecture, **spec.model_config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild {spec.architecture!r} from its config: {exc}") from exc
    if model.embedding_dim != spec.embedding_dim:
        raise CheckpointError(
            f"{path}: spec says embedding_dim {spec.embedding_dim}, the rebuilt model has {model.embedding_dim}"
        )
    try:
        state = load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"{path}: weights unreadable, the file may be truncated ({exc})") from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the {spec.architecture} model: {exc}") from exc
    model.to(device).eval()
    return model, spec

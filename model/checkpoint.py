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

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from model.base import ReIDModel
from model.spec import (
    FORMAT_VERSION,
    METADATA_KEY,
    CheckpointError,
    CheckpointSpec,
    file_sha256,
    read_checkpoint_spec,
)
from model.thresholds import parse_buckets

logger = logging.getLogger(__name__)

__all__ = [
    "FORMAT_VERSION",
    "METADATA_KEY",
    "CheckpointError",
    "CheckpointSpec",
    "file_sha256",
    "load_checkpoint",
    "read_checkpoint_spec",
    "save_checkpoint",
    "spec_for",
]


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

"""GET /info tells where the match threshold comes from (calibrated | default | setting) and shows the
calibration model card; a checkpoint without a calibrated threshold is warned about at start."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from model import load_checkpoint, save_checkpoint
from tests.service.conftest import AppFactory
from tests.support.checkpoints import make_tiny_checkpoint


def test_uncalibrated_checkpoint_warns_and_uses_the_default(
    make_client: AppFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    checkpoint = make_tiny_checkpoint(tmp_path / "imported.safetensors", threshold=None)
    with caplog.at_level(logging.WARNING, logger="service.app"):
        client = make_client(checkpoint=checkpoint, default_threshold=0.42)
    info: dict[str, Any] = client.get("/info").json()
    assert (info["threshold"], info["threshold_source"], info["checkpoint_threshold"]) == (0.42, "default", None)
    assert info["calibration"] is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("imported.safetensors carries no calibrated threshold" in w and "reid-calibrate" in w for w in warnings)


def test_calibrated_checkpoint_shows_its_model_card_and_does_not_warn(
    make_client: AppFactory, tiny_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, spec = load_checkpoint(tiny_checkpoint)
    card = {"objective": "highest recall with precision >= 0.9", "threshold": 0.7, "precision": 0.91, "recall": 0.4,
            "data": {"format": "folder", "people": 12}}  # fmt: skip
    calibrated = tmp_path / "calibrated.safetensors"
    save_checkpoint(model, calibrated, threshold=0.7, metrics=spec.metrics, calibration=card)
    with caplog.at_level(logging.WARNING, logger="service.app"):
        client = make_client(checkpoint=calibrated)
    info = client.get("/info").json()
    assert (info["threshold"], info["threshold_source"], info["checkpoint_threshold"]) == (0.7, "calibrated", 0.7)
    assert info["calibration"] == card
    assert not [r for r in caplog.records if "no calibrated threshold" in r.getMessage()]
    # A setting still wins, and says so.
    overridden = make_client(checkpoint=calibrated, threshold=0.2, data_dir=tmp_path / "other")
    info = overridden.get("/info").json()
    assert (info["threshold"], info["threshold_source"], info["checkpoint_threshold"]) == (0.2, "setting", 0.7)

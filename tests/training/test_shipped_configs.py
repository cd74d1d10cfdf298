"""The training configs shipped in training/configs parse strictly and describe models the factory builds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model import build_model
from training.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "training" / "configs").glob("*.yaml"))


def test_configs_are_shipped() -> None:
    assert CONFIGS, "training/configs holds no YAML config"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_builds_its_model(path: Path) -> None:
    config = load_config(path, ["data.root=/nonexistent"])
    # Weight initialisation downloads where online; the architecture itself is what this checks.
    options = {k: v for k, v in config.model.options.items() if k not in ("pretrained", "pose_weights")}
    model = build_model(config.model.name, num_classes=4, input_size=(64, 32), **options).train()
    out = model(torch.rand(4, 3, 64, 32))
    assert out.features.shape == (4, model.embedding_dim)
    assert set(out.layer_features) == set(config.model.options.get("layer_wise", []))

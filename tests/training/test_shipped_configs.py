"""The training configs shipped in training/configs parse strictly and describe models the factory builds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model import build_model
from training.config import TrainConfig, load_config

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


def _config(name: str) -> TrainConfig:
    return load_config(Path(CONFIGS[0]).parent / name)


def test_comparison_configs_rerun_the_seed_setup() -> None:
    """seed_pose_bilinear: two streams, no layer-wise heads, 10% of the actions, 50 epochs; the baselines train
    on the same share for as long; every SoccerNet config picks on valid and reports test, the others pick
    nothing (the last step)."""
    seed = _config("seed_pose_bilinear.yaml")
    assert seed.model.name == "pose_bilinear" and seed.model.options["layer_wise"] == []
    assert seed.data.train_fraction == 0.1 and seed.optim.epochs == 50
    for name, arch in (("resnet50_baseline.yaml", "resnet50"), ("osnet_baseline.yaml", "osnet_x1_0")):
        baseline = _config(name)
        assert baseline.model.name == arch
        assert (baseline.data.train_fraction, baseline.data.train_fraction_seed, baseline.optim.epochs) == (
            seed.data.train_fraction, seed.data.train_fraction_seed, seed.optim.epochs)
    for path in CONFIGS:
        config = load_config(path)
        if config.data.format == "soccernet":
            assert (config.data.valid_split, config.data.test_split, config.run.select) == ("valid", "test", "best")
        else:  # Market-style data has no validation split: nothing may be selected on its test people
            assert config.run.select == "last", path.name
        if config.model.name == "pose_bilinear":
            assert "pose_weights" in config.model.options, path.name  # explicit, never the silent default


def test_recommended_recipe_sums_layer_terms_and_keeps_the_pose_prior() -> None:
    config = _config("soccernet.yaml")
    assert config.model.options["layer_wise"] and config.loss.layer_weight == 1.0
    assert config.model.options["pose_weights"].endswith(".safetensors")
    assert config.optim.lr_mult == {"pose": 0.1} and config.data.train_fraction == 1.0


def test_pose_ablation_variants_share_data_steps_seed_and_budget() -> None:
    """(a), (b) and (c) differ in the model only: same data, steps, seed, batch, schedule, no selection."""
    variants = [_config(f"pose_ablation_{name}.yaml") for name in ("a_osnet", "b_pose", "c_pose_layers")]
    first = variants[0].as_dict()
    for config in variants[1:]:
        other = config.as_dict()
        for section in ("data", "optim", "sampler", "loss"):
            assert other[section] == first[section], section
        assert {k: v for k, v in other["run"].items() if k != "out_dir"} == {
            k: v for k, v in first["run"].items() if k != "out_dir"
        }
    assert all(c.run.select == "last" for c in variants)
    b, c = variants[1].model.options, variants[2].model.options
    assert b["pose"] == c["pose"] == "efficientpose_rt" and not b["layer_wise"] and c["layer_wise"]
    assert {k: v for k, v in b.items() if k != "layer_wise"} == {k: v for k, v in c.items() if k != "layer_wise"}

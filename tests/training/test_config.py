"""Typed configs: YAML + dotted overrides, unknown keys and mistyped values rejected, resolved config round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from model.pose import OpenPoseBody
from training.config import ConfigError, TrainConfig, load_config, parse_override, save_config
from training.train.loop import build_training_model


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(text)
    return path


def test_defaults_without_file_or_overrides() -> None:
    assert load_config() == TrainConfig()


def test_yaml_then_overrides_take_precedence(tmp_path: Path) -> None:
    path = write(tmp_path, "optim:\n  lr: 0.001\n  epochs: 3\nmodel:\n  name: osnet_x0_25\nrun:\n  amp: false\n")
    config = load_config(path, ["optim.lr=0.02", "data.height=64", 'model.options={"neck": "none"}',
                                "data.cuhk03_train_pids=[0, 10]"])
    assert config.optim.lr == 0.02  # override beats the file
    assert config.optim.epochs == 3  # file beats the default
    assert config.model.name == "osnet_x0_25"
    assert config.run.amp is False
    assert config.data.height == 64
    assert config.model.options == {"neck": "none"}
    assert config.data.cuhk03_train_pids == [0, 10]
    assert config.data.width == TrainConfig().data.width  # untouched default


def test_yaml_scientific_notation_is_a_number(tmp_path: Path) -> None:
    """PyYAML's YAML 1.1 reads 1e-3 as a string; the config loader reads it as the float it is."""
    config = load_config(write(tmp_path, "optim:\n  lr: 1e-3\n  weight_decay: 5.0e-4\n"))
    assert config.optim.lr == pytest.approx(1e-3)
    assert config.optim.weight_decay == pytest.approx(5e-4)


@pytest.mark.parametrize("key", ["optim.lrr=0.1", "optimizer.lr=0.1", "run.amp.x=1"])
def test_unknown_override_key_is_named(key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [key])
    name = key.split("=")[0].split(".")
    assert any(part in str(info.value) for part in name[:2])


def test_unknown_yaml_key_is_named_with_its_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['warmup'\] in optim"):
        load_config(write(tmp_path, "optim:\n  warmup: 10\n"))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['trainer'\]"):
        load_config(write(tmp_path, "trainer:\n  epochs: 10\n"))


@pytest.mark.parametrize("text", ["yes", "no", "on", "off", "Yes", "1"])
def test_yes_is_not_a_boolean_in_yaml(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match=r"run\.amp: expected true or false"):
        load_config(write(tmp_path, f"run:\n  amp: {text}\n"))


@pytest.mark.parametrize("text", ["yes", "1", "True"])
def test_yes_is_not_a_boolean_on_the_command_line(text: str) -> None:
    with pytest.raises(ConfigError, match=r"run\.amp: expected true or false"):
        load_config(None, [f"run.amp={text}"])


def test_real_booleans_are_accepted() -> None:
    assert load_config(None, ["run.amp=false", "run.resume=true"]).run.amp is False


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.epochs=2.5", "optim.epochs: expected an integer"),
        ("optim.epochs=true", "optim.epochs: expected an integer"),
        ("optim.lr=fast", "optim.lr: expected a number"),
        ("data.cuhk03_train_pids=[0, \"x\"]", r"data.cuhk03_train_pids\[1\]: expected an integer"),
        ("model.options=3", "model.options: expected a mapping"),
        ("optim=3", "optim: expected a mapping"),
    ],
)
def test_mistyped_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_integer_is_accepted_for_a_float_field() -> None:
    config = load_config(None, ["optim.lr=1"])
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)


def test_string_fields_keep_override_text_that_looks_like_json() -> None:
    config = load_config(None, ["run.out_dir=2024", "data.root=true", "model.init_checkpoint=null"])
    assert config.run.out_dir == "2024"
    assert config.data.root == "true"
    assert config.model.init_checkpoint is None


def test_optional_field_accepts_null_and_value() -> None:
    assert load_config(None, ["optim.grad_clip=null"]).optim.grad_clip is None
    assert load_config(None, ["optim.steps_per_epoch=7"]).optim.steps_per_epoch == 7


def test_malformed_override_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"dotted\.key=value"):
        parse_override("optim.lr")
    with pytest.raises(ConfigError, match="empty key"):
        parse_override("optim..lr=1")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_config_is_frozen() -> None:
    config = load_config()
    with pytest.raises(ValidationError, match="frozen"):
        config.optim.lr = 1.0  # type: ignore[misc]


def test_resolved_config_round_trip(tmp_path: Path) -> None:
    config = load_config(None, ["optim.lr=0.0123", "run.out_dir=runs/x", "run.amp=false", "optim.grad_clip=null",
                                'model.options={"neck": "none", "layer_wise": ["layer3"]}', "data.root=yes"])
    save_config(config, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == config
    assert again.data.root == "yes"  # written quoted, so it stays a string


@pytest.mark.parametrize("empty", ["model:\n", "model: null\n", "model: ~\n"])
def test_override_into_an_empty_yaml_section_is_kept(tmp_path: Path, empty: str) -> None:
    """A section left empty in the YAML file (null) used to swallow overrides into it."""
    config = load_config(write(tmp_path, empty + "run:\n  seed: 3\n"),
                         ["model.name=resnet50", "model.options.neck=none"])
    assert config.model.name == "resnet50"
    assert config.model.options == {"neck": "none"}
    assert config.run.seed == 3


def test_empty_section_means_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "optim:\nrun:\n")) == TrainConfig()


def test_overrides_inside_model_options_are_plain_values(tmp_path: Path) -> None:
    """Scalar, null, list and path overrides under model.options arrive as int / None / list / str (issue 17)."""
    yaml_path = write(tmp_path, "model:\n  name: pose_bilinear\n  options:\n    embedding_dim: 1024\n"
                                "    pretrained: imagenet\n")
    weights = tmp_path / "pose.safetensors"
    config = load_config(yaml_path, ["model.options.embedding_dim=64", "model.options.pretrained=null",
                                     'model.options.layer_wise=["layer4"]', f"model.options.pose_weights={weights}",
                                     "model.options.pose_trainable=false", "model.options.pose_output=parts"])
    options = config.model.options
    assert options == {"embedding_dim": 64, "pretrained": None, "layer_wise": ["layer4"],
                       "pose_weights": str(weights), "pose_trainable": False, "pose_output": "parts"}
    assert type(options["embedding_dim"]) is int
    assert type(options["layer_wise"]) is list and type(options["pose_weights"]) is str


def test_overridden_model_options_reach_the_built_model(tmp_path: Path) -> None:
    """The model is built from the overridden options: embedding size, layer heads, pose weights from a file,
    and no ImageNet download (pretrained=null; this machine has no network)."""
    source = OpenPoseBody(stages=1, output="features")
    with torch.no_grad():
        source.front["conv1_1"].weight.fill_(0.25)
    weights = tmp_path / "pose_body.pt"
    torch.save({**source.state_dict()}, weights)
    config = load_config(None, [
        "model.name=pose_bilinear", "data.height=64", "data.width=32",
        'model.options={"embedding_dim": 1024, "pretrained": "imagenet", "pose_stages": 2}',
        "model.options.embedding_dim=64", "model.options.pretrained=null", "model.options.pose_stages=1",
        'model.options.layer_wise=["layer4"]', f"model.options.pose_weights={weights}",
    ])
    model = build_training_model(config, num_classes=5)
    assert model.embedding_dim == 64
    assert model.config["layer_wise"] == ["layer4"] and model.config["pose_stages"] == 1
    assert torch.equal(model.pose.front["conv1_1"].weight, torch.full_like(model.pose.front["conv1_1"].weight, 0.25))
    out = model.train()(torch.rand(2, 3, 64, 32))
    assert out.features.shape == (2, 64) and set(out.layer_features) == {"layer4"}


def test_string_value_inside_options_is_kept_as_text() -> None:
    assert load_config(None, ["model.options.neck=bnneck"]).model.options == {"neck": "bnneck"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.format=imagenet", "data.format"),
        ("run.select=median", "run.select"),
        ("data.train_fraction=0", "data.train_fraction"),
        ("data.train_fraction=1.5", "data.train_fraction"),
        ("data.test_split=valid", "test_split must differ"),
        ('optim.lr_mult={"pose": "slow"}', r"optim.lr_mult.pose: expected a number"),
    ],
)
def test_choices_and_ranges_are_checked(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])

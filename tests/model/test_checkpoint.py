"""Checkpoint round trips and the errors a damaged or foreign file must give."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from model import FORMAT_VERSION, CheckpointError, build_model, load_checkpoint, read_checkpoint_spec, save_checkpoint
from model.checkpoint import METADATA_KEY


@pytest.fixture()
def saved(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    model = build_model("pose_bilinear", num_classes=3, input_size=(64, 32), embedding_dim=64, pose_stages=1,
                        layer_wise=["layer4"])
    # Move BN statistics away from their defaults so a round trip that dropped buffers would show.
    model.train()
    with torch.no_grad():
        model(torch.rand(4, 3, 64, 32))
    model.eval()
    path = tmp_path / "model.safetensors"
    save_checkpoint(model, path, threshold=0.42, metrics={"mAP": 0.5}, train_meta={"epochs": 1})
    return path, model


def test_round_trip_gives_identical_embeddings_and_spec(saved: tuple[Path, torch.nn.Module]) -> None:
    path, model = saved
    loaded, spec = load_checkpoint(path)
    x = torch.rand(3, 3, 64, 32)
    assert torch.equal(loaded.embed(x), model.embed(x))
    assert not loaded.training
    assert spec.format_version == FORMAT_VERSION
    assert spec.architecture == "pose_bilinear"
    assert spec.embedding_dim == 64
    assert spec.threshold == pytest.approx(0.42)
    assert spec.metrics == {"mAP": 0.5}
    assert spec.train_meta == {"epochs": 1}
    assert (spec.preprocess.height, spec.preprocess.width) == (64, 32)
    assert spec.preprocess.mean == pytest.approx((0.485, 0.456, 0.406))
    assert read_checkpoint_spec(path) == spec


def test_every_architecture_round_trips(tmp_path: Path) -> None:
    for name in ("resnet50", "osnet_x0_25", "osnet_x1_0"):
        torch.manual_seed(0)
        model = build_model(name, input_size=(64, 32)).eval()
        path = tmp_path / f"{name}.safetensors"
        save_checkpoint(model, path)
        loaded, spec = load_checkpoint(path)
        x = torch.rand(2, 3, 64, 32)
        assert torch.equal(loaded.embed(x), model.embed(x)), name
        assert spec.threshold is None


def test_truncated_file_is_a_clear_error(saved: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    path, _ = saved
    data = path.read_bytes()
    for cut in (len(data) // 2, 100, 7):
        broken = tmp_path / f"cut{cut}.safetensors"
        broken.write_bytes(data[:cut])
        with pytest.raises(CheckpointError):
            load_checkpoint(broken)


def test_wrong_files_are_clear_errors(tmp_path: Path) -> None:
    not_safetensors = tmp_path / "x.safetensors"
    not_safetensors.write_bytes(b"PK\x03\x04 this is a zip, not weights")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(not_safetensors)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="not a checkpoint of this project"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.safetensors")


def _rewrite_spec(path: Path, out: Path, **changes: object) -> Path:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as handle:
        spec = json.loads(handle.metadata()[METADATA_KEY])
    spec.update(changes)
    save_file(load_file(str(path)), str(out), metadata={METADATA_KEY: json.dumps(spec)})
    return out


def test_future_format_version_is_refused(saved: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    path, _ = saved
    future = _rewrite_spec(path, tmp_path / "future.safetensors", format_version=FORMAT_VERSION + 1)
    with pytest.raises(CheckpointError, match="upgrade"):
        read_checkpoint_spec(future)


def test_weights_that_do_not_fit_the_config_are_refused(saved: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    path, model = saved
    config = dict(model.config, embedding_dim=32)
    mismatched = _rewrite_spec(path, tmp_path / "mismatch.safetensors", model_config=config, embedding_dim=32)
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(mismatched)
    unknown = _rewrite_spec(path, tmp_path / "unknown.safetensors", architecture="vit_h")
    with pytest.raises(CheckpointError, match="valid"):
        load_checkpoint(unknown)


def test_provenance_round_trips_and_older_files_read_as_empty(
    saved: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    path, model = saved
    assert read_checkpoint_spec(path).provenance == {}
    card = {"name": "osnet_x0_25_msmt17", "sha256": "ab" * 32, "fetched_at": "2026-01-01T00:00:00+00:00"}
    with_card = tmp_path / "card.safetensors"
    save_checkpoint(model, with_card, provenance=card)
    assert read_checkpoint_spec(with_card).provenance == card
    # A file written before provenance existed (no key at all) still loads, with an empty provenance.
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(with_card), framework="pt") as handle:
        spec = json.loads(handle.metadata()[METADATA_KEY])
    del spec["provenance"]
    older = tmp_path / "older.safetensors"
    save_file(load_file(str(with_card)), str(older), metadata={METADATA_KEY: json.dumps(spec)})
    _, loaded_spec = load_checkpoint(older)
    assert loaded_spec.provenance == {} and loaded_spec.format_version == FORMAT_VERSION


def test_calibration_card_round_trips_and_older_files_read_without_one(tmp_path: Path) -> None:
    model = build_model("osnet_x0_25", num_classes=0, input_size=(64, 32)).eval()
    card = {"objective": "recall at precision >= 0.9", "threshold": 0.61, "data": {"format": "folder"}}
    path = tmp_path / "calibrated.safetensors"
    save_checkpoint(model, path, threshold=0.61, calibration=card)
    assert read_checkpoint_spec(path).calibration == card
    # A file written before the card existed: no "calibration" key in its spec at all.
    legacy = json.loads(json.dumps(read_checkpoint_spec(path).as_dict()))
    del legacy["calibration"]
    old = tmp_path / "old.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(old),
              metadata={METADATA_KEY: json.dumps(legacy)})
    assert read_checkpoint_spec(old).calibration == {}


def test_calibration_card_comes_from_reid_calibrate_else_from_training() -> None:
    from model.spec import CheckpointSpec, Preprocess

    base = CheckpointSpec(1, "osnet_x0_25", {}, Preprocess(64, 32), 512, threshold=0.7)
    assert base.calibration_card() is None  # a bare threshold: /info says "checkpoint", not "calibrated"
    trained = CheckpointSpec(
        1, "osnet_x0_25", {}, Preprocess(64, 32), 512, threshold=0.7,
        metrics={"calibration": {"threshold": 0.7, "f1": 0.8, "num_queries": 26}},
    )
    card = trained.calibration_card()
    assert card is not None and card["f1"] == 0.8 and "validation split" in card["objective"]
    calibrated = CheckpointSpec(
        1, "osnet_x0_25", {}, Preprocess(64, 32), 512, threshold=0.6, metrics=trained.metrics,
        calibration={"objective": "precision >= 0.9", "threshold": 0.6},
    )
    assert calibrated.calibration_card() == {"objective": "precision >= 0.9", "threshold": 0.6}

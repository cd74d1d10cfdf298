"""The SoccerNet recipe: explicit pose prior, learning-rate multipliers, a seeded share of whole actions,
selection on valid with test scored once, and reid-train end to end with overrides inside model.options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model import build_model, read_checkpoint_spec
from model.pose import OpenPoseBody
from training.cli import train_main
from training.config import load_config
from training.data.readers import Sample, subsample_train
from training.data.synthetic import SyntheticConfig, generate_soccernet_tree
from training.train.loop import lr_factor, make_optimizer, parameter_groups, pose_prior, read_metrics

TINY = SyntheticConfig(train_games=3, valid_games=1, test_games=1, actions_per_game=2, players_per_action=4,
                       views=3, height=32, width=16, occlusion_p=0.0, low_res_p=0.0)


@pytest.fixture(scope="module")
def tiny_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny") / "soccernet"
    generate_soccernet_tree(root, TINY)
    return root


# ------------------------------------------------------------------------------------------ pose prior


def test_pose_bilinear_without_pose_weights_is_refused() -> None:
    with pytest.raises(ValueError, match="reid-import-openpose"):
        pose_prior(load_config(None, ["model.name=pose_bilinear"]))
    with pytest.raises(ValueError, match="explicitly `none`"):
        pose_prior(load_config(None, ["model.name=pose_bilinear", "model.options.pose_weights=null"]))


def test_pose_prior_says_where_the_pose_stream_starts(tmp_path: Path) -> None:
    def prior(value: str) -> dict:
        result = pose_prior(load_config(None, ["model.name=pose_bilinear", f"model.options.pose_weights={value}"]))
        assert result is not None
        return result

    assert prior("none")["pose_prior"] is False
    assert prior("imagenet")["pose_prior"] is False and "VGG-19" in prior("imagenet")["source"]
    own = tmp_path / "openpose_body.pt"
    torch.save(OpenPoseBody(stages=1, output="parts+pafs").state_dict(), own)
    assert prior(str(own)) == {"pose_weights": str(own), "pose_prior": True, "source": "OpenPose body weights"}
    vgg = tmp_path / "vgg19.pt"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, vgg)
    assert prior(str(vgg))["pose_prior"] is False
    assert pose_prior(load_config(None, ["model.name=resnet50"])) is None


# -------------------------------------------------------------------------------------- lr multipliers


def test_lr_mult_makes_parameter_groups_that_keep_their_ratio() -> None:
    model = build_model("osnet_x0_25", num_classes=3, input_size=(32, 16))
    config = load_config(None, ["optim.lr=0.01", 'optim.lr_mult={"backbone": 0.1, "backbone.conv1": 0.5}',
                                "optim.warmup_steps=2", "optim.schedule=cosine"]).optim
    optimizer = make_optimizer(model, config)
    lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert lrs == pytest.approx({"default": 0.01, "backbone": 0.001, "backbone.conv1": 0.005})
    assert optimizer.param_groups[0]["name"] == "default"  # the logged lr is the base rate
    conv1 = {id(p) for p in model.backbone.conv1.parameters()}
    by_name = {group["name"]: {id(p) for p in group["params"]} for group in optimizer.param_groups}
    assert by_name["backbone.conv1"] == conv1  # the longest prefix wins
    assert not by_name["backbone"] & conv1
    assert sum(len(g) for g in by_name.values()) == sum(1 for p in model.parameters() if p.requires_grad)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, 10, config))
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    default, backbone, _ = scheduler.get_last_lr()
    assert backbone / default == pytest.approx(0.1)


def test_lr_mult_prefix_that_matches_nothing_is_an_error() -> None:
    model = build_model("osnet_x0_25", num_classes=3, input_size=(32, 16))
    with pytest.raises(ValueError, match=r"\['pose'\] match no trainable parameter"):
        parameter_groups(model, 0.1, {"pose": 0.1})


# ------------------------------------------------------------------------------------- train fraction


def _samples(actions: int, ids: int) -> list[Sample]:
    return [Sample(Path(f"{a}/{i}.png"), a * ids + i, 0, f"l/s/g{a // 4}/{a}") for a in range(actions)
            for i in range(ids)]


def test_train_fraction_draws_whole_actions_with_a_seed() -> None:
    samples = _samples(actions=20, ids=3)
    chosen, num = subsample_train(samples, 0.1, seed=0)
    groups = {s.group for s in chosen}
    assert len(groups) == 2 and num == 6
    assert len(chosen) == sum(s.group in groups for s in samples)  # every crop of a chosen action
    assert sorted({s.pid for s in chosen}) == list(range(6))  # relabelled for the classifier
    assert subsample_train(samples, 0.1, seed=0)[0] == chosen
    assert any({s.group for s in subsample_train(samples, 0.1, seed=k)[0]} != groups for k in range(1, 5))
    assert subsample_train(samples, 1.0)[1] == 60


# ------------------------------------------------------------------------ end to end: select and test


def test_reid_train_end_to_end_with_model_options_overrides(tiny_tree: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """reid-train with overrides inside model.options (issue 17) builds the model they describe, says the pose
    stream has no prior, picks the checkpoint on valid and scores test once, separately."""
    out = tmp_path / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = train_main([
            "--config", str(Path(__file__).resolve().parents[3] / "training" / "configs" / "soccernet.yaml"),
            f"data.root={tiny_tree}", "data.height=32", "data.width=16", "data.workers=0", "data.pad=2",
            "data.train_fraction=0.5", "model.options.embedding_dim=32", "model.options.pretrained=null",
            "model.options.pose_weights=none", "model.options.pose_stages=1", 'model.options.layer_wise=["layer4"]',
            "optim.epochs=2", "optim.steps_per_epoch=2", "optim.warmup_steps=1",
            "sampler.identities_per_batch=2", "sampler.instances_per_identity=2",
            "run.device=cpu", "run.eval_every_epochs=1", "run.progress=false", "run.log_every=1",
            "run.channels_last=false", f"run.out_dir={out}",
        ])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    spec = read_checkpoint_spec(out / "best.safetensors")
    assert spec.architecture == "pose_bilinear" and spec.embedding_dim == 32
    assert spec.model_config["pose_stages"] == 1 and spec.model_config["layer_wise"] == ["layer4"]
    assert spec.train_meta["pose"] == {"pose_weights": "none", "pose_prior": False, "source": "random initialisation"}
    assert spec.train_meta["train_fraction"] == 0.5
    assert spec.train_meta["data_summary"]["train_pids"] == 12  # 3 of 6 actions, 4 players each

    records = read_metrics(out / "metrics.jsonl")
    assert records[0]["run"]["selection"] == {"split": "valid", "select": "best", "test_split": "test"}
    evals = [r for r in records if "eval" in r]
    assert [r["split"] for r in evals] == ["soccernet/valid", "soccernet/valid"]
    best = max(evals, key=lambda r: r["eval"]["mAP"])  # first of equals, as the loop keeps the first
    assert spec.train_meta["epoch"] == best["epoch"]
    tests = [r["test"] for r in records if "test" in r]
    assert len(tests) == 1 and tests[0]["split"] == "test" and tests[0]["selected_epoch"] == best["epoch"]
    assert json.loads((out / "test_metrics.json").read_text()) == tests[0] == printed["test_metrics"]
    assert printed["best_metrics"]["mAP"] == best["eval"]["mAP"]

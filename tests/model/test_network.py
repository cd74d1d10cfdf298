"""Every architecture: embedding contract at 256x128, a training forward, and a few optimiser steps that learn."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model import ARCHITECTURES, ReIDOutput, build_model

SMALL = {
    "pose_bilinear": {"embedding_dim": 256, "pose_stages": 1},
    "resnet50": {},
    "osnet_x1_0": {},
    "osnet_x0_75": {},
    "osnet_x0_5": {},
    "osnet_x0_25": {},
}


def test_factory_lists_valid_names_on_unknown_architecture() -> None:
    with pytest.raises(ValueError, match=r"valid: .*osnet_x0_25.*pose_bilinear.*resnet50"):
        build_model("resnet101")


def test_factory_rejects_unknown_config_keys() -> None:
    with pytest.raises(ValueError, match="resnet50"):
        build_model("resnet50", no_such_option=3)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_embed_is_finite_and_unit_norm_at_256x128(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=5, **SMALL[name]).eval()
    x = torch.rand(2, 3, 256, 128)
    emb = model.embed(x)
    assert emb.shape == (2, model.embedding_dim)
    assert emb.dtype == torch.float32
    assert torch.isfinite(emb).all()
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2), atol=1e-5, rtol=0)
    # uint8 input is the same image: the model scales it to [0, 1] itself.
    as_uint8 = (x * 255).round().to(torch.uint8)
    torch.testing.assert_close(model.embed(as_uint8), model.embed(as_uint8.float() / 255), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_training_steps_reduce_loss_on_a_fixed_batch(name: str) -> None:
    torch.manual_seed(0)
    layer_wise = {"layer_wise": ["layer3", "layer4"]} if name in ("resnet50", "pose_bilinear") else {}
    model = build_model(name, num_classes=4, input_size=(64, 32), **SMALL[name], **layer_wise).train()
    x = torch.rand(8, 3, 64, 32)
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-4)

    def loss_of(out: ReIDOutput) -> torch.Tensor:
        assert out.logits is not None
        # anchor i, positive = its pair, negative = the next identity's first crop
        anchor, positive, negative = out.features[0::2], out.features[1::2], out.features[[2, 4, 6, 0]]
        loss = F.cross_entropy(out.logits, pids) + F.triplet_margin_loss(anchor, positive, negative, margin=0.3)
        for feats in out.layer_features.values():
            loss = loss + F.triplet_margin_loss(feats[0::2], feats[1::2], feats[[2, 4, 6, 0]], margin=0.3)
        return loss

    losses = []
    for _ in range(4):
        out = model(x)
        assert out.features.shape == (8, model.embedding_dim)
        assert out.logits is not None and out.logits.shape == (8, 4)
        if layer_wise:
            assert set(out.layer_features) == {"layer3", "layer4"}
            assert all(f.shape == (8, 256) for f in out.layer_features.values())
        loss = loss_of(out)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0], losses


def test_model_without_classifier_returns_no_logits() -> None:
    model = build_model("resnet50", input_size=(64, 32)).train()
    out = model(torch.rand(2, 3, 64, 32))
    assert out.logits is None
    assert out.layer_features == {}


def test_rebuilding_from_config_gives_the_same_architecture() -> None:
    model = build_model("pose_bilinear", num_classes=3, input_size=(64, 32), embedding_dim=128, pose_stages=2,
                        layer_wise=["layer2"])
    again = build_model(model.architecture, **model.config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in again.state_dict().items()}
    # The sketch hashes are seeded buffers: a rebuilt model sketches identically.
    assert torch.equal(model.pooling.sketch_appearance.index, again.pooling.sketch_appearance.index)


def test_frozen_pose_stream_gets_no_gradient() -> None:
    model = build_model("pose_bilinear", num_classes=2, input_size=(64, 32), embedding_dim=64, pose_stages=1,
                        pose_trainable=False).train()
    out = model(torch.rand(4, 3, 64, 32))
    assert out.logits is not None
    F.cross_entropy(out.logits, torch.tensor([0, 1, 0, 1])).backward()
    assert all(p.grad is None for p in model.pose.parameters())
    assert any(p.grad is not None for p in model.backbone.parameters())


def test_resnet50_imagenet_init_from_a_local_state_dict(tmp_path) -> None:
    import torchvision

    torch.manual_seed(1)
    reference = torchvision.models.resnet50(weights=None)
    path = tmp_path / "resnet50_imagenet.pth"
    torch.save(reference.state_dict(), path)
    model = build_model("resnet50", pretrained=str(path))
    torch.testing.assert_close(model.backbone.conv1.weight, reference.conv1.weight)
    torch.testing.assert_close(model.backbone.layer4[2].conv3.weight, reference.layer4[2].conv3.weight)
    # Initialisation sources are not part of the saved config, so a checkpoint never re-reads them.
    assert "pretrained" not in model.config
    # last stride 1: a 256x128 crop gives a 16x8 appearance map.
    maps = model.backbone(torch.rand(1, 3, 256, 128))
    assert maps["layer4"].shape == (1, 2048, 16, 8)


def test_resnet50_init_rejects_a_foreign_state_dict(tmp_path) -> None:
    path = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(3, 3)}, path)
    with pytest.raises((ValueError, RuntimeError)):
        build_model("resnet50", pretrained=str(path))

"""ResNet-50 re-id networks: the BNNeck baseline and the pose-bilinear two-stream model.

    model = PoseBilinearReID(num_classes=751, embedding_dim=1024, pose_stages=2)
    out = model(torch.rand(4, 3, 256, 128))   # features (4, 1024), logits (4, 751)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model.backbones import LayerWiseHeads, ResNet50Backbone
from model.base import DEFAULT_INPUT_SIZE, IMAGENET_MEAN, IMAGENET_STD, ReIDModel
from model.bilinear import CompactBilinearPooling, normalise_bilinear
from model.pose import OpenPoseBody

logger = logging.getLogger(__name__)


class ResNet50ReID(ReIDModel):
    """ResNet-50 (last stride 1) + global average pooling + BNNeck; optional layer-wise similarity heads.

    (B, 3, H, W) -> features (B, 2048).
    """

    architecture = "resnet50"

    def __init__(
        self,
        num_classes: int = 0,
        input_size: Sequence[int] = DEFAULT_INPUT_SIZE,
        last_stride: int = 1,
        layer_wise: Sequence[str] = (),
        layer_wise_dim: int = 256,
        pretrained: str | Path | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        neck: str = "bnneck",
    ) -> None:
        config: dict[str, Any] = {
            "num_classes": num_classes,
            "input_size": list(input_size),
            "last_stride": last_stride,
            "layer_wise": list(layer_wise),
            "layer_wise_dim": layer_wise_dim,
            "mean": list(mean),
            "std": list(std),
            "neck": neck,
        }
        super().__init__(
            config=config,
            embedding_dim=2048,
            num_classes=num_classes,
            input_size=(int(input_size[0]), int(input_size[1])),
            mean=tuple(mean),  # type: ignore[arg-type]
            std=tuple(std),  # type: ignore[arg-type]
            neck=neck,
        )
        self.backbone = ResNet50Backbone(last_stride=last_stride, pretrained=pretrained)
        self.layer_heads = LayerWiseHeads(layer_wise, layer_wise_dim) if layer_wise else None

    def extract(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        maps = self.backbone(x)
        features = maps["layer4"].mean(dim=(2, 3))
        layer_features = self.layer_heads(maps) if self.layer_heads is not None else {}
        return features, layer_features


class PoseBilinearReID(ReIDModel):
    """Appearance (ResNet-50) and pose/part (OpenPose body) streams fused by compact bilinear pooling.

    Appearance map A: (B, 2048, H/16, W/16); part map P: (B, C_p, H/8, W/8) average-pooled to A's size;
    f = L2(signed_sqrt(TensorSketch(A, P))): (B, embedding_dim); then BNNeck and the identity classifier.
    """

    architecture = "pose_bilinear"
    # The pose stream has its own input convention (OpenPose's), so extract() receives [0, 1] images.
    raw_input = True

    def __init__(
        self,
        num_classes: int = 0,
        input_size: Sequence[int] = DEFAULT_INPUT_SIZE,
        embedding_dim: int = 1024,
        pose_stages: int = 2,
        pose_output: str = "features",
        pose_trainable: bool = True,
        last_stride: int = 1,
        layer_wise: Sequence[str] = (),
        layer_wise_dim: int = 256,
        sketch_seed: int = 0,
        pretrained: str | Path | None = None,
        pose_weights: str | Path | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        neck: str = "bnneck",
    ) -> None:
        config: dict[str, Any] = {
            "num_classes": num_classes,
            "input_size": list(input_size),
            "embedding_dim": embedding_dim,
            "pose_stages": pose_stages,
            "pose_output": pose_output,
            "pose_trainable": pose_trainable,
            "last_stride": last_stride,
            "layer_wise": list(layer_wise),
            "layer_wise_dim": layer_wise_dim,
            "sketch_seed": sketch_seed,
            "mean": list(mean),
            "std": list(std),
            "neck": neck,
        }
        super().__init__(
            config=config,
            embedding_dim=embedding_dim,
            num_classes=num_classes,
            input_size=(int(input_size[0]), int(input_size[1])),
            mean=tuple(mean),  # type: ignore[arg-type]
            std=tuple(std),  # type: ignore[arg-type]
            neck=neck,
        )
        self.backbone = ResNet50Backbone(last_stride=last_stride, pretrained=pretrained)
        self.pose = OpenPoseBody(stages=pose_stages, output=pose_output, weights=pose_weights)
        self.pose_trainable = pose_trainable
        if not pose_trainable:
            self.pose.requires_grad_(False)
        self.pooling = CompactBilinearPooling(
            self.backbone.out_channels, self.pose.out_channels, embedding_dim, seed=sketch_seed
        )
        self.layer_heads = LayerWiseHeads(layer_wise, layer_wise_dim) if layer_wise else None

    def part_map(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images (B, 3, H, W) -> part map (B, C_p, H/8, W/8)."""
        if self.pose_trainable:
            return self.pose(x)
        with torch.no_grad():
            return self.pose(x)

    def extract(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        maps = self.backbone(self.normalise(x))
        appearance = maps["layer4"]
        parts = F.adaptive_avg_pool2d(self.part_map(x), appearance.shape[-2:])
        features = normalise_bilinear(self.pooling(appearance, parts))
        layer_features = self.layer_heads(maps) if self.layer_heads is not None else {}
        return features, layer_features

    def train(self, mode: bool = True) -> PoseBilinearReID:
        super().train(mode)
        if not self.pose_trainable:
            # A frozen stream keeps its batch-norm-free VGG/CPM layers deterministic; eval mode is explicit anyway.
            self.pose.eval()
        return self


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

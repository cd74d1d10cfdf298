"""ResNet-50 re-id networks: the BNNeck baseline and the pose-bilinear two-stream model.

    model = PoseBilinearReID(num_classes=751, embedding_dim=1024, pose_stages=2)
    small = PoseBilinearReID(appearance="osnet_x0_25", pose="efficientpose_rt", pose_output="parts",
                             pretrained="osnet_x0_25_msmt17.pth", pose_weights="efficientpose_rt.pth")
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

from model.appearance import appearance_maps, build_appearance
from model.backbones import LayerWiseHeads, ResNet50Backbone
from model.base import DEFAULT_INPUT_SIZE, IMAGENET_MEAN, IMAGENET_STD, ReIDModel
from model.bilinear import CompactBilinearPooling, normalise_bilinear
from model.efficientpose import OUTPUT_MODES as EFFICIENTPOSE_OUTPUTS
from model.efficientpose import EfficientPose
from model.pose import OUTPUT_MODES as OPENPOSE_OUTPUTS
from model.pose import OpenPoseBody
from model.sources import named_source, weight_source

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


POSE_STREAMS: tuple[str, ...] = ("openpose", "efficientpose_rt", "efficientpose_i")


def build_pose_stream(
    pose: str, stages: int | None, output: str, weights: str | Path | None
) -> OpenPoseBody | EfficientPose:
    """The pose/part stream ``pose`` with its output mode; ``stages`` applies to openpose only (None there: 2)."""
    if pose not in POSE_STREAMS:
        raise ValueError(f"unknown pose stream {pose!r}; valid: {list(POSE_STREAMS)}")
    if pose == "openpose":
        if output not in OPENPOSE_OUTPUTS:
            raise ValueError(f"pose_output {output!r} is not an openpose output; valid: {list(OPENPOSE_OUTPUTS)}")
        return OpenPoseBody(stages=2 if stages is None else stages, output=output, weights=weights)
    if stages is not None:
        raise ValueError(f"pose_stages applies to the openpose stream only, not {pose!r} (EfficientPose has 3 passes)")
    if output not in EFFICIENTPOSE_OUTPUTS:
        raise ValueError(f"pose_output {output!r} is not an {pose} output; valid: {list(EFFICIENTPOSE_OUTPUTS)}")
    return EfficientPose(pose.removeprefix("efficientpose_"), output=output, weights=weights)


class PoseBilinearReID(ReIDModel):
    """Appearance and pose/part streams fused by compact bilinear pooling; each stream chosen by name.

    appearance: "resnet50" (the method's; map (B, 2048, H/16, W/16)), "osnet_x0_25" ((B, 128, H/16, W/16)) or
    "mobilenet_v2" ((B, 1280, H/32, W/32)). pose: "openpose" (the method's; pose_output features | parts | pafs |
    parts+pafs at H/8), "efficientpose_rt" or "efficientpose_i" (pose_output parts: 16 MPII heatmaps at H;
    confidences: the same at H/8; features: the last pass's 120 / 144 channels at H/8). The part map P is
    average-pooled to the appearance map's size; f = L2(signed_sqrt(TensorSketch(A, P))): (B, embedding_dim);
    then BNNeck and the identity classifier. ``pose_trainable=False`` freezes the pose stream (eval mode, no
    gradients); a learning pose stream can get its own rate through the training config's optim.lr_mult
    ({"pose": 0.1}).

    ``pretrained`` / ``pose_weights`` initialise the streams (files read with weights_only, strictly); where they
    came from (file, sha256, licence) is in ``init_sources`` for the model card.
    """

    architecture = "pose_bilinear"
    # The pose stream has its own input convention, so extract() receives [0, 1] images.
    raw_input = True

    def __init__(
        self,
        num_classes: int = 0,
        input_size: Sequence[int] = DEFAULT_INPUT_SIZE,
        embedding_dim: int = 1024,
        appearance: str = "resnet50",
        pose: str = "openpose",
        pose_stages: int | None = None,
        pose_output: str = "features",
        pose_trainable: bool = True,
        last_stride: int | None = None,
        layer_wise: Sequence[str] = (),
        layer_wise_dim: int = 256,
        sketch_seed: int = 0,
        pretrained: str | Path | None = None,
        pose_weights: str | Path | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        neck: str = "bnneck",
    ) -> None:
        if not isinstance(pose_trainable, bool):
            raise ValueError(f"pose_trainable must be true or false, got {pose_trainable!r}")
        config: dict[str, Any] = {
            "num_classes": num_classes,
            "input_size": list(input_size),
            "embedding_dim": embedding_dim,
            "appearance": appearance,
            "pose": pose,
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
        self.backbone = build_appearance(appearance, last_stride, pretrained)
        self.pose = build_pose_stream(pose, pose_stages, pose_output, pose_weights)
        self.pose_trainable = pose_trainable
        if not pose_trainable:
            self.pose.requires_grad_(False)
        channels: dict[str, int] = self.backbone.layer_channels  # type: ignore[assignment]
        self.final_layer: str = self.backbone.final  # type: ignore[assignment]
        self.pooling = CompactBilinearPooling(
            channels[self.final_layer], self.pose.out_channels, embedding_dim, seed=sketch_seed
        )
        self.layer_heads = LayerWiseHeads(layer_wise, layer_wise_dim, channels) if layer_wise else None
        self.init_sources: list[dict[str, Any]] = list(self.backbone.sources)  # type: ignore[arg-type]
        if pose_weights is not None:
            self.init_sources.append(
                named_source("torchvision VGG19_Weights.IMAGENET1K_V1", "pose", "CC-BY-4.0 (VGG weights)")
                if str(pose_weights) == "imagenet"
                else weight_source(pose_weights, "pose")
            )

    def part_map(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images (B, 3, H, W) -> part map (B, C_p, H/s, W/s), s the pose stream's output stride."""
        if self.pose_trainable:
            return self.pose(x)
        with torch.no_grad():
            return self.pose(x)

    def fuse(self, maps: dict[str, torch.Tensor], parts: torch.Tensor) -> torch.Tensor:
        """Appearance stage maps and a part map (any size) -> the bilinear feature (B, embedding_dim)."""
        appearance = maps[self.final_layer]
        parts = F.adaptive_avg_pool2d(parts, (int(appearance.shape[-2]), int(appearance.shape[-1])))
        return normalise_bilinear(self.pooling(appearance, parts))

    def extract(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        maps = appearance_maps(self.backbone, self.normalise(x))
        features = self.fuse(maps, self.part_map(x))
        layer_features = self.layer_heads(maps) if self.layer_heads is not None else {}
        return features, layer_features

    def train(self, mode: bool = True) -> PoseBilinearReID:
        super().train(mode)
        if not self.pose_trainable:
            # A frozen stream keeps its batch-norm statistics (EfficientPose) and stays deterministic.
            self.pose.eval()
        return self


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

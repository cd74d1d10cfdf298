"""EfficientPose RT and I (Groos et al. 2021): small body-pose networks used as the part stream.

Both variants share one layout, written here from the published description and the parameter names of the
converted weights (Apache-2.0, public repository daniegr/EfficientPose)::

    x (ImageNet-normalised RGB)            (B, 3, H, W)
    backbone: EfficientNet-B0 blocks up to stride 8, one trunk per input resolution
              RT: one trunk on x; I: a deep trunk on x and a shallow one on avg_pool2(x)
    F = concat(trunk outputs)              (B, C_F, H/8, W/8)    RT: 40, I: 48 + 24 = 72
    pass 1 ("skeleton"):   D_1 = dense3(F)
    pass t ("detection"):  D_t = dense3(concat(D_{t-1}, F))       t = 2, 3
    confidences = conv1x1(D_3)            (B, 16, H/8, W/8)
    heatmaps    = 3 x fixed bilinear 2x transposed convolution    (B, 16, H, W)

dense3 is three MBConv blocks (1x1 expand, 5x5 depthwise, squeeze-excite, 1x1 project, E-swish with beta 1.25)
with dense connections: block 2 reads block 1, block 3 reads (2, 1), the pass returns (3, 2, 1) concatenated.
Backbone blocks use plain swish. Convolutions pad like TensorFlow's "SAME" (for stride 2 the odd extra pixel
goes after, not before), which is what makes the converted weights reproduce the original outputs.

The 16 maps are the MPII joints in the order of ``MPII_JOINTS``. Parameter names are kept apart from the
original ones: ``source_key_map()`` pairs each of ours with the original name, and ``load_weights`` requires a
one-to-one match (strict both ways)::

    pose = EfficientPose("rt", weights="efficientpose_rt.pth")
    heatmaps = pose(torch.rand(2, 3, 256, 128))     # (2, 16, 256, 128); input RGB in [0, 1]
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from model.backbones import load_state_dict_file
from model.base import IMAGENET_MEAN, IMAGENET_STD

logger = logging.getLogger(__name__)

MPII_JOINTS: tuple[str, ...] = (
    "head_top",
    "upper_neck",
    "right_shoulder",
    "right_elbow",
    "right_wrist",
    "thorax",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "pelvis",
    "right_hip",
    "right_knee",
    "right_ankle",
    "left_hip",
    "left_knee",
    "left_ankle",
)
NUM_JOINTS = len(MPII_JOINTS)
STRIDE = 8
# "parts": the 16 heatmaps at input resolution; "confidences": the same maps before upsampling (H/8);
# "features": the last pass's dense features (H/8) that the confidence conv reads.
OUTPUT_MODES: tuple[str, ...] = ("parts", "confidences", "features")
BN_EPS = 1e-3
ESWISH_BETA = 1.25


@dataclass(frozen=True)
class BlockSpec:
    """One EfficientNet MBConv block of a backbone trunk; ``name`` is its name in the original weights."""

    name: str
    in_channels: int
    out_channels: int
    expand: int
    kernel: int
    stride: int
    residual: bool


@dataclass(frozen=True)
class VariantSpec:
    """Trunks (resolution tag -> input downscale, blocks), pass widths and the training input size."""

    trunks: tuple[tuple[str, int, tuple[BlockSpec, ...]], ...]
    pass_channels: int
    pass_expand: int
    train_size: int


def _b(name: str, c_in: int, c_out: int, expand: int, kernel: int, stride: int, residual: bool) -> BlockSpec:
    return BlockSpec(name, c_in, c_out, expand, kernel, stride, residual)


VARIANTS: dict[str, VariantSpec] = {
    "rt": VariantSpec(
        trunks=(
            (
                "res1",
                1,
                (
                    _b("block1a", 32, 16, 1, 3, 1, False),
                    _b("block2a", 16, 24, 6, 3, 2, False),
                    _b("block2b", 24, 24, 6, 3, 1, True),
                    _b("block3a", 24, 40, 6, 5, 2, False),
                    _b("block3b", 40, 40, 6, 5, 1, True),
                ),
            ),
        ),
        pass_channels=40,
        pass_expand=6,
        train_size=224,
    ),
    "i": VariantSpec(
        trunks=(
            (
                "res1",
                1,
                (
                    _b("block1a", 32, 16, 1, 3, 1, False),
                    _b("block1b", 16, 16, 1, 3, 1, True),
                    _b("block2a", 16, 24, 6, 3, 2, False),
                    _b("block2b", 24, 24, 6, 3, 1, True),
                    _b("block2c", 24, 24, 6, 3, 1, True),
                    _b("block3a", 24, 48, 6, 5, 2, False),
                    _b("block3b", 48, 48, 6, 5, 1, True),
                    _b("block3c", 48, 48, 6, 5, 1, True),
                ),
            ),
            (
                "res2",
                2,
                (
                    _b("block1a", 32, 16, 1, 3, 1, False),
                    _b("block2a", 16, 24, 6, 3, 2, False),
                    # The original low-resolution trunk is cut at this block's projection, before its skip.
                    _b("block2b", 24, 24, 6, 3, 1, False),
                ),
            ),
        ),
        pass_channels=48,
        pass_expand=6,
        train_size=256,
    ),
}
PASS_NAMES: tuple[str, ...] = ("skeleton", "detection1", "detection2")


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) for one spatial dimension: output = ceil(size / stride)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """nn.Conv2d with TensorFlow "SAME" padding computed from the input size. (B, C, H, W) -> (B, C', H/s, W/s)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel_size
        sh, sw = self.stride
        top, bottom = same_padding(int(x.shape[-2]), kh, sh)
        left, right = same_padding(int(x.shape[-1]), kw, sw)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return self._conv_forward(x, self.weight, self.bias)


class Swish(nn.Module):
    """x * sigmoid(x) scaled by ``beta`` (beta 1: swish / SiLU; 1.25: the E-swish of EfficientPose's passes)."""

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x * torch.sigmoid(x)
        return out * self.beta if self.beta != 1.0 else out


class SqueezeExcite(nn.Module):
    """Channel gate: x * sigmoid(expand(act(reduce(mean_hw(x))))). (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int, reduced: int, beta: float) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.act = Swish(beta)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.expand(self.act(self.reduce(x.mean(dim=(2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)


class MBConv(nn.Module):
    """Inverted residual block: [1x1 expand, BN, act] -> kxk depthwise, BN, act -> SE -> 1x1 project, BN.

    (B, C_in, H, W) -> (B, C_out, H/stride, W/stride); adds the input when ``residual``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: int,
        se_channels: int,
        kernel: int,
        stride: int,
        beta: float,
        residual: bool,
    ) -> None:
        super().__init__()
        self.residual = residual
        self.expand: nn.Sequential | None = None
        if hidden != in_channels:
            self.expand = nn.Sequential(
                nn.Conv2d(in_channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden, eps=BN_EPS), Swish(beta)
            )
        self.depthwise = nn.Sequential(
            SameConv2d(hidden, hidden, kernel, stride=stride, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden, eps=BN_EPS),
            Swish(beta),
        )
        self.se = SqueezeExcite(hidden, se_channels, beta)
        self.project = nn.Sequential(
            nn.Conv2d(hidden, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels, eps=BN_EPS)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.expand(x) if self.expand is not None else x
        out = self.project(self.se(self.depthwise(h)))
        return out + x if self.residual else out


class Trunk(nn.Module):
    """Stem (3x3 stride-2 conv, BN, swish) and EfficientNet blocks. (B, 3, H, W) -> (B, C, H/8, W/8)."""

    def __init__(self, blocks: Sequence[BlockSpec]) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            SameConv2d(3, 32, 3, stride=2, bias=False), nn.BatchNorm2d(32, eps=BN_EPS), Swish()
        )
        self.blocks = nn.ModuleList(
            MBConv(
                s.in_channels,
                s.out_channels,
                s.in_channels * s.expand,
                max(1, int(s.in_channels * 0.25)),
                s.kernel,
                s.stride,
                1.0,
                s.residual,
            )
            for s in blocks
        )
        self.out_channels = blocks[-1].out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return x


class DensePass(nn.Module):
    """Three densely connected MBConv blocks. (B, C_in, h, w) -> (B, 3 * C, h, w), newest block first."""

    def __init__(self, in_channels: int, channels: int, expand: int) -> None:
        super().__init__()
        hidden, se = channels * expand, max(1, int(channels * 0.25))

        def block(c_in: int) -> MBConv:
            return MBConv(c_in, channels, hidden, se, 5, 1, ESWISH_BETA, False)

        self.blocks = nn.ModuleList([block(in_channels), block(channels), block(2 * channels)])
        self.out_channels = 3 * channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.blocks[0](x)
        dense = torch.cat([self.blocks[1](first), first], dim=1)
        return torch.cat([self.blocks[2](dense), dense], dim=1)


def bilinear_upsampling_kernel(size: int = 4) -> torch.Tensor:
    """The fixed (size, size) kernel that makes a stride-2 transposed convolution a bilinear 2x upsampling."""
    factor = (size + 1) // 2
    centre = factor - 1 if size % 2 == 1 else factor - 0.5
    ramp = 1.0 - (torch.arange(size, dtype=torch.float32) - centre).abs() / factor
    return ramp[:, None] * ramp[None, :]


class EfficientPose(nn.Module):
    """EfficientPose RT or I; the pose/part stream of the pose-bilinear model.

    (B, 3, H, W) RGB in [0, 1] (H, W multiples of 8) -> by ``output``: "parts" (B, 16, H, W) heatmaps,
    "confidences" (B, 16, H/8, W/8), "features" (B, 120 | 144, H/8, W/8). The ImageNet normalisation the
    network was trained with is applied inside (fixed buffers), so it takes the same [0, 1] input as
    ``OpenPoseBody``.

    weights: None (random init) or a path to the converted original state dict (efficientpose_rt.pth /
    efficientpose_i.pth) or to this module's own state dict.
    """

    input_mean: torch.Tensor
    input_std: torch.Tensor
    upsample_kernel: torch.Tensor

    def __init__(self, variant: str = "rt", output: str = "parts", weights: str | Path | None = None) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown EfficientPose variant {variant!r}; valid: {sorted(VARIANTS)}")
        if output not in OUTPUT_MODES:
            raise ValueError(f"unknown EfficientPose output {output!r}; valid: {list(OUTPUT_MODES)}")
        spec = VARIANTS[variant]
        self.variant, self.output = variant, output
        self.trunk_scales = tuple(scale for _, scale, _ in spec.trunks)
        self.trunk_tags = tuple(tag for tag, _, _ in spec.trunks)
        self.trunks = nn.ModuleList(Trunk(blocks) for _, _, blocks in spec.trunks)
        feature_channels = sum(t.out_channels for t in self.trunks)  # type: ignore[misc]
        pass_out = 3 * spec.pass_channels
        self.passes = nn.ModuleList(
            DensePass(feature_channels + (pass_out if i else 0), spec.pass_channels, spec.pass_expand)
            for i in range(len(PASS_NAMES))
        )
        self.confidences = nn.Conv2d(pass_out, NUM_JOINTS, 1)
        self.out_channels = pass_out if output == "features" else NUM_JOINTS
        self.stride = STRIDE if output != "parts" else 1
        self.train_size = spec.train_size
        self.register_buffer("input_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        kernel = bilinear_upsampling_kernel(4).expand(NUM_JOINTS, 1, 4, 4).clone()
        self.register_buffer("upsample_kernel", kernel, persistent=False)
        if weights is not None:
            self.load_weights(weights)

    # ------------------------------------------------------------------ weights

    def source_key_map(self) -> dict[str, str]:
        """Our state-dict key -> the key of the same tensor in the converted original weights."""
        spec = VARIANTS[self.variant]
        table: dict[str, str] = {}

        def conv(ours: str, theirs: str, bias: bool = False) -> None:
            table[f"{ours}.weight"] = f"{theirs}.weight"
            if bias:
                table[f"{ours}.bias"] = f"{theirs}.bias"

        def bn(ours: str, theirs: str) -> None:
            for field in ("weight", "bias", "running_mean", "running_var"):
                table[f"{ours}.{field}"] = f"{theirs}_FusedBatchNorm_1.{field}"

        for t, (tag, _, blocks) in enumerate(spec.trunks):
            base = f"trunks.{t}"
            conv(f"{base}.stem.0", f"stem_conv_{tag}_convolution")
            bn(f"{base}.stem.1", f"stem_bn_{tag}")
            for i, block in enumerate(blocks):
                ours, name = f"{base}.blocks.{i}", block.name
                if block.expand != 1:
                    conv(f"{ours}.expand.0", f"{name}_expand_conv_{tag}_convolution")
                    bn(f"{ours}.expand.1", f"{name}_expand_bn_{tag}")
                conv(f"{ours}.depthwise.0", f"{name}_dwconv_{tag}_depthwise")
                bn(f"{ours}.depthwise.1", f"{name}_bn_{tag}")
                conv(f"{ours}.se.reduce", f"{name}_se_reduce_{tag}_convolution", bias=True)
                conv(f"{ours}.se.expand", f"{name}_se_expand_{tag}_convolution", bias=True)
                conv(f"{ours}.project.0", f"{name}_project_conv_{tag}_convolution")
                bn(f"{ours}.project.1", f"{name}_project_bn_{tag}")
        for p, pass_name in enumerate(PASS_NAMES):
            for i in range(3):
                ours, name = f"passes.{p}.blocks.{i}", f"pass{p + 1}_block1_mbconv{i + 1}_{pass_name}"
                conv(f"{ours}.expand.0", f"{name}_conv1_convolution")
                bn(f"{ours}.expand.1", f"{name}_conv1_bn")
                conv(f"{ours}.depthwise.0", f"{name}_dconv1_depthwise")
                bn(f"{ours}.depthwise.1", f"{name}_dconv1_bn")
                conv(f"{ours}.se.reduce", f"{name}_se_se_squeeze_conv_convolution", bias=True)
                conv(f"{ours}.se.expand", f"{name}_se_se_excite_conv_convolution", bias=True)
                conv(f"{ours}.project.0", f"{name}_conv2_convolution")
                bn(f"{ours}.project.1", f"{name}_conv2_bn")
        conv("confidences", "pass3_detection2_confs_convolution", bias=True)
        return table

    def load_weights(self, weights: str | Path) -> None:
        """Load the converted original weights (renamed) or our own state dict; every tensor must fit exactly."""
        state = load_state_dict_file(weights)
        current = self.state_dict()
        # BatchNorm's step counters are bookkeeping the converted weights do not carry; keep ours for them.
        counters = {key: value for key, value in current.items() if key.endswith(".num_batches_tracked")}
        ours = set(current) - set(counters)
        if set(state) - set(counters) == ours:
            self.load_state_dict({**counters, **state}, strict=True)
            logger.info("EfficientPose-%s: own state dict from %s", self.variant.upper(), weights)
            return
        table = self.source_key_map()
        if set(table) != ours:  # a bug in the table, not in the file
            raise RuntimeError(f"EfficientPose key table out of step with the module: {sorted(ours ^ set(table))[:5]}")
        missing = sorted(theirs for theirs in table.values() if theirs not in state)
        unused = sorted(set(state) - set(table.values()))
        if missing or unused:
            raise ValueError(
                f"{weights}: not EfficientPose-{self.variant.upper()} weights: "
                f"{len(missing)} tensors missing (first: {missing[:3]}), {len(unused)} unexpected (first: {unused[:3]})"
            )
        self.load_state_dict({**counters, **{key: state[theirs] for key, theirs in table.items()}}, strict=True)
        logger.info("EfficientPose-%s: original weights from %s", self.variant.upper(), weights)

    # ------------------------------------------------------------------ forward

    def dense_features(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalised (B, 3, H, W) -> the last pass's features (B, 3 * C, H/8, W/8)."""
        maps = []
        for scale, trunk in zip(self.trunk_scales, self.trunks, strict=True):
            maps.append(trunk(F.avg_pool2d(x, scale) if scale > 1 else x))
        features = torch.cat(maps, dim=1) if len(maps) > 1 else maps[0]
        dense = self.passes[0](features)
        for stage in self.passes[1:]:
            dense = stage(torch.cat([dense, features], dim=1))
        return dense

    def upsample(self, confidences: torch.Tensor) -> torch.Tensor:
        """(B, 16, h, w) -> (B, 16, 8h, 8w): three bilinear 2x steps, as the original's fixed transposed convs."""
        kernel = self.upsample_kernel.to(confidences.dtype)
        for _ in range(3):
            confidences = F.conv_transpose2d(confidences, kernel, stride=2, padding=1, groups=NUM_JOINTS)
        return confidences

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] (B, 3, H, W) -> (B, out_channels, H / stride, W / stride)."""
        if x.shape[-2] % STRIDE or x.shape[-1] % STRIDE:
            raise ValueError(f"EfficientPose needs H and W divisible by {STRIDE}, got {tuple(x.shape[-2:])}")
        x = (x - self.input_mean.to(x.dtype)) / self.input_std.to(x.dtype)
        return self.forward_normalised(x)

    def forward_normalised(self, x: torch.Tensor) -> torch.Tensor:
        """Already ImageNet-normalised (B, 3, H, W) -> the configured output (see the class docstring)."""
        dense = self.dense_features(x)
        if self.output == "features":
            return dense
        confidences = self.confidences(dense)
        return confidences if self.output == "confidences" else self.upsample(confidences)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (fixed buffers excluded)."""
    return sum(p.numel() for p in module.parameters())


def output_channels(variant: str, output: str) -> int:
    """Channels of an EfficientPose output without building it."""
    if variant not in VARIANTS or output not in OUTPUT_MODES:
        raise ValueError(f"unknown EfficientPose variant/output {variant!r}/{output!r}")
    return 3 * VARIANTS[variant].pass_channels if output == "features" else NUM_JOINTS

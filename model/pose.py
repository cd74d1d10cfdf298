"""The OpenPose COCO body network (Cao et al., CVPR 2017) as the pose/part stream of the pose-bilinear model.

Layout (the CMU COCO body model, which the public ``body_pose_model.pth`` weights fit)::

    F     = conv4_4_CPM(conv4_3_CPM(VGG-19 conv1_1 .. conv4_2))          (B, 128, H/8, W/8)
    stage 1:   L^1 = phi^1(F)                  S^1 = rho^1(F)              5 convs per branch
    stage t>1: L^t = phi^t(L^{t-1}, S^{t-1}, F)  S^t = rho^t(L^{t-1}, S^{t-1}, F)   7 convs per branch

L are the part affinity fields (38 channels: 19 limbs x (dx, dy)), S the part confidence maps
(18 COCO keypoints + background = 19 channels). Both branches of a stage read the same input, the
concatenation (L, S, F) in that order (38 + 19 + 128 = 185 channels).

How this maps onto the seed's notation, L^t = phi^t(F, L^{t-1}) for t <= T_p and
S^t = rho^t(F, L^{T_p}, S^{t-1}): the seed describes the later OpenPose (Cao et al., TPAMI 2019), which first
refines PAFs alone and then runs the part stages on the final PAF. No public weights in the naming we convert
exist for that layout, so we keep the 2017 layout, where each stage refines both maps side by side: phi^t also
sees S^{t-1}, and rho^t sees the previous stage's PAF, L^{t-1}, in place of L^{T_p}. With T = ``stages`` kept,
our L^T and S^T play the seed's final PAF and part maps.

Input convention: CMU trained on BGR images scaled as v/256 - 0.5 (v in 0..255). ``forward`` takes RGB in
[0, 1] and applies a fixed per-pixel affine map held in two buffers (``input_weight`` (3, 3), ``input_bias``
(3,)): BGR flip and 255/256 * x - 0.5 by default. Initialising the VGG front from ImageNet (torchvision: RGB,
(x - mean) / std) switches the buffers to the ImageNet map instead. Being buffers, they are saved with the
model, so a network rebuilt from a checkpoint (which never re-reads the init weights) sees the same input as
it did in training.

Random initialisation (``weights=None``): Kaiming normal (fan-in, ReLU gain) for every conv followed by a
ReLU, so the 30-40 layer plain conv stack keeps its activation scale; normal(std=0.01) for the final 1x1
output convs, as in the CMU training prototxt; zero biases.

Deviation from the widely used PyTorch port: its "no ReLU" list repeats Mconv7_stage6_L1 and so puts a ReLU
after Mconv7_stage6_L2; we follow the Caffe original, where no branch output has a ReLU.

Usage::

    pose = OpenPoseBody(stages=2, output="features", weights="body_pose_model.pth")
    part_map = pose(torch.rand(8, 3, 256, 128))    # (8, 128, 32, 16)
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from model.backbones import load_state_dict_file
from model.base import IMAGENET_MEAN, IMAGENET_STD

logger = logging.getLogger(__name__)

PAF_CHANNELS = 38
PART_CHANNELS = 19
FEATURE_CHANNELS = 128
MAX_STAGES = 6
OUTPUT_MODES: tuple[str, ...] = ("features", "parts", "pafs", "parts+pafs")

# VGG-19 front + the two CPM adaptation convs: (our layer name, CMU name, in, out); all 3x3, padding 1, ReLU.
FRONT_LAYERS: tuple[tuple[str, str, int, int], ...] = (
    ("conv1_1", "conv1_1", 3, 64),
    ("conv1_2", "conv1_2", 64, 64),
    ("conv2_1", "conv2_1", 64, 128),
    ("conv2_2", "conv2_2", 128, 128),
    ("conv3_1", "conv3_1", 128, 256),
    ("conv3_2", "conv3_2", 256, 256),
    ("conv3_3", "conv3_3", 256, 256),
    ("conv3_4", "conv3_4", 256, 256),
    ("conv4_1", "conv4_1", 256, 512),
    ("conv4_2", "conv4_2", 512, 512),
    ("conv4_3_cpm", "conv4_3_CPM", 512, 256),
    ("conv4_4_cpm", "conv4_4_CPM", 256, 128),
)
# 2x2 max-pools with stride 2 after these layers give the stride of 8.
POOL_AFTER: frozenset[str] = frozenset({"conv1_2", "conv2_2", "conv3_4"})
# Positions of the VGG convs in torchvision's vgg19().features (ReLU and pool modules sit in between).
TORCHVISION_VGG19_INDEX: dict[str, int] = {
    "conv1_1": 0,
    "conv1_2": 2,
    "conv2_1": 5,
    "conv2_2": 7,
    "conv3_1": 10,
    "conv3_2": 12,
    "conv3_3": 14,
    "conv3_4": 16,
    "conv4_1": 19,
    "conv4_2": 21,
}
BRANCHES: dict[str, tuple[str, int]] = {"paf": ("L1", PAF_CHANNELS), "parts": ("L2", PART_CHANNELS)}


def branch_layout(stage: int, out_channels: int) -> list[tuple[int, int, int]]:
    """(in_channels, out_channels, kernel) of each conv of one branch of ``stage`` (1-based)."""
    if stage == 1:
        return [(128, 128, 3), (128, 128, 3), (128, 128, 3), (128, 512, 1), (512, out_channels, 1)]
    stage_in = PAF_CHANNELS + PART_CHANNELS + FEATURE_CHANNELS
    return [(stage_in, 128, 7)] + [(128, 128, 7)] * 4 + [(128, 128, 1), (128, out_channels, 1)]


def _check_stages(stages: int) -> None:
    if isinstance(stages, bool) or not isinstance(stages, int) or not 1 <= stages <= MAX_STAGES:
        raise ValueError(f"stages must be an integer in 1..{MAX_STAGES}, got {stages!r}")


def _cmu_layer_name(stage: int, branch: str, conv: int) -> str:
    """CMU name of conv ``conv`` (1-based) of a branch, e.g. conv5_3_CPM_L2 or Mconv6_stage4_L1."""
    suffix = BRANCHES[branch][0]
    if stage == 1:
        return f"conv5_{conv}_CPM_{suffix}"
    return f"Mconv{conv}_stage{stage}_{suffix}"


def cmu_body_key_map(stages: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    """CMU tensor name -> (our tensor name, shape) for the front and both branches of stages 1..``stages``."""
    _check_stages(stages)
    table: dict[str, tuple[str, tuple[int, ...]]] = {}

    def add(cmu: str, ours: str, c_in: int, c_out: int, kernel: int) -> None:
        table[f"{cmu}.weight"] = (f"{ours}.weight", (c_out, c_in, kernel, kernel))
        table[f"{cmu}.bias"] = (f"{ours}.bias", (c_out,))

    for ours, cmu, c_in, c_out in FRONT_LAYERS:
        add(cmu, f"front.{ours}", c_in, c_out, 3)
    for stage in range(1, stages + 1):
        for branch, (_, out_channels) in BRANCHES.items():
            for j, (c_in, c_out, kernel) in enumerate(branch_layout(stage, out_channels)):
                add(
                    _cmu_layer_name(stage, branch, j + 1),
                    f"stages.{stage - 1}.{branch}.convs.{j}",
                    c_in,
                    c_out,
                    kernel,
                )
    return table


# Someone may hand us the state dict of the PyTorch port's module itself (model0.conv1_1.weight, ...) rather
# than the flat file; DataParallel adds module.
_CMU_PREFIX = re.compile(r"^(module\.)?(model\d(_\d)?\.)?")


def convert_cmu_body_state_dict(state: Mapping[str, torch.Tensor], stages: int) -> dict[str, torch.Tensor]:
    """Map a CMU OpenPose COCO body state dict (body_pose_model.pth names) onto ``OpenPoseBody`` tensor names.

    Every tensor of the front and of both branches of stages 1..``stages`` must be present with its exact
    shape; otherwise ValueError names each missing or mis-shaped key. Tensors of later stages are dropped.
    """
    table = cmu_body_key_map(stages)
    flat = {_CMU_PREFIX.sub("", key): value for key, value in state.items()}
    converted: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    mismatched: list[str] = []
    for cmu_key, (our_key, shape) in table.items():
        if cmu_key not in flat:
            missing.append(cmu_key)
        elif tuple(flat[cmu_key].shape) != shape:
            mismatched.append(f"{cmu_key}: expected {shape}, got {tuple(flat[cmu_key].shape)}")
        else:
            converted[our_key] = flat[cmu_key]
    if missing or mismatched:
        raise ValueError(
            f"not a CMU OpenPose COCO body state dict for {stages} stage(s): "
            f"missing {missing or 'none'}; mis-shaped {mismatched or 'none'}"
        )
    ignored = [key for key in flat if key not in table]
    later = [key for key in ignored if _is_later_stage(key, stages)]
    if later:
        logger.info("CMU body weights: ignored %d tensors of stages after %d", len(later), stages)
    if len(ignored) > len(later):
        logger.warning("CMU body weights: ignored %d tensors with unknown names", len(ignored) - len(later))
    return converted


def _is_later_stage(cmu_key: str, stages: int) -> bool:
    match = re.match(r"^Mconv\d_stage(\d)_L[12]\.", cmu_key)
    return match is not None and int(match.group(1)) > stages


def vgg19_front_from_torchvision(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision VGG-19 state dict (features.N.weight) -> our front conv1_1 .. conv4_2 tensors.

    The other VGG layers (conv4_3 onwards, the classifier) have no counterpart here and are ignored;
    ValueError names every needed key that is missing or mis-shaped.
    """
    shapes = {ours: (c_out, c_in, 3, 3) for ours, _, c_in, c_out in FRONT_LAYERS}
    converted: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    for layer, index in TORCHVISION_VGG19_INDEX.items():
        for suffix, shape in (("weight", shapes[layer]), ("bias", shapes[layer][:1])):
            key = f"features.{index}.{suffix}"
            if key not in state:
                problems.append(f"{key}: missing")
            elif tuple(state[key].shape) != shape:
                problems.append(f"{key}: expected {shape}, got {tuple(state[key].shape)}")
            else:
                converted[f"front.{layer}.{suffix}"] = state[key]
    if problems:
        raise ValueError(f"not a torchvision VGG-19 state dict: {problems}")
    return converted


def caffe_input_transform() -> tuple[torch.Tensor, torch.Tensor]:
    """(weight (3, 3), bias (3,)) taking RGB in [0, 1] to CMU's BGR v/256 - 0.5 (v = 255 x)."""
    weight = torch.zeros(3, 3)
    for out_channel in range(3):
        weight[out_channel, 2 - out_channel] = 255.0 / 256.0
    return weight, torch.full((3,), -0.5)


def imagenet_input_transform() -> tuple[torch.Tensor, torch.Tensor]:
    """(weight (3, 3), bias (3,)) taking RGB in [0, 1] to torchvision's (x - mean) / std."""
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    return torch.diag(1.0 / std), -mean / std


class _Branch(nn.Module):
    """One branch of one stage: convs with ReLU after all but the final (output) conv.

    (B, C_in, h, w) -> (hidden (B, C_hidden, h, w), output (B, C_out, h, w)); hidden is the ReLU output
    feeding the final 1x1 conv (512 channels in stage 1, 128 in later stages). Without ``head`` the final conv
    is not built and output is None.
    """

    def __init__(self, layout: list[tuple[int, int, int]], head: bool = True) -> None:
        super().__init__()
        self.head = head
        kept = layout if head else layout[:-1]
        self.convs = nn.ModuleList(nn.Conv2d(c_in, c_out, k, padding=k // 2) for c_in, c_out, k in kept)
        self.hidden_channels = layout[-1][0]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden_convs = self.convs[:-1] if self.head else self.convs
        for conv in hidden_convs:
            x = F.relu(conv(x))
        return x, self.convs[-1](x) if self.head else None


class _Stage(nn.Module):
    """Both branches of one stage; what nothing reads is not built (see OpenPoseBody)."""

    def __init__(self, stage: int, paf: bool, parts: bool, parts_head: bool = True) -> None:
        super().__init__()
        self.paf: _Branch | None = _Branch(branch_layout(stage, PAF_CHANNELS)) if paf else None
        self.parts: _Branch | None = _Branch(branch_layout(stage, PART_CHANNELS), head=parts_head) if parts else None


class OpenPoseBody(nn.Module):
    """OpenPose COCO body network truncated to ``stages`` stages; the pose/part stream.

    (B, 3, H, W) RGB in [0, 1] -> (B, out_channels, H/8, W/8), where by ``output``:
    "parts": S of the last kept stage (19); "pafs": L of the last kept stage (38); "parts+pafs": both (57,
    parts first as in CMU's net_output); "features": the ReLU activation feeding the last kept stage's final
    part conv (128, or 512 when stages == 1), the map the pose-bilinear paper pools.

    The last stage only builds what its output reads (one branch, or for "features" the part branch without
    its final conv), so every parameter takes part in the loss (DDP needs no find_unused_parameters) and no
    time goes to a map nobody reads.

    weights: None (random init, see the module docstring); "imagenet" (VGG front conv1_1..conv4_2 from
    torchvision's VGG19_Weights.IMAGENET1K_V1, a download where online; input switched to the ImageNet
    convention); or a path (.safetensors or torch file, loaded with weights_only) holding a torchvision VGG-19
    state dict (same as "imagenet"), a CMU body_pose_model.pth state dict (converted), or this module's own
    state dict (later stages than kept are dropped).
    """

    stride: int = 8
    out_channels: int
    input_weight: torch.Tensor
    input_bias: torch.Tensor

    def __init__(self, stages: int = 2, output: str = "features", weights: str | Path | None = None) -> None:
        super().__init__()
        _check_stages(stages)
        if output not in OUTPUT_MODES:
            raise ValueError(f"unknown pose output {output!r}; valid: {list(OUTPUT_MODES)}")
        self.num_stages = stages
        self.output = output
        self.front = nn.ModuleDict(
            {name: nn.Conv2d(c_in, c_out, 3, padding=1) for name, _, c_in, c_out in FRONT_LAYERS}
        )
        last_paf = output in ("pafs", "parts+pafs")
        last_parts = output in ("parts", "parts+pafs", "features")
        self.stages = nn.ModuleList(
            _Stage(
                t,
                paf=t < stages or last_paf,
                parts=t < stages or last_parts,
                parts_head=t < stages or output != "features",
            )
            for t in range(1, stages + 1)
        )
        if output == "features":
            last = self.stages[-1]
            assert isinstance(last, _Stage) and last.parts is not None
            self.out_channels = last.parts.hidden_channels
        else:
            self.out_channels = {"parts": PART_CHANNELS, "pafs": PAF_CHANNELS, "parts+pafs": 57}[output]
        weight, bias = caffe_input_transform()
        self.register_buffer("input_weight", weight)
        self.register_buffer("input_bias", bias)
        self.reset_parameters()
        if weights is not None:
            self.load_weights(weights)

    def reset_parameters(self) -> None:
        final_convs = {id(m.convs[-1]) for m in self.modules() if isinstance(m, _Branch) and m.head}
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                if id(module) in final_convs:
                    nn.init.normal_(module.weight, std=0.01)
                else:
                    nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                assert module.bias is not None
                nn.init.zeros_(module.bias)

    @property
    def input_convention(self) -> str:
        """Which map ``to_network_input`` applies: "caffe_bgr", "imagenet_rgb" or "custom"."""
        for name, (weight, bias) in (
            ("caffe_bgr", caffe_input_transform()),
            ("imagenet_rgb", imagenet_input_transform()),
        ):
            if torch.allclose(self.input_weight.cpu(), weight) and torch.allclose(self.input_bias.cpu(), bias):
                return name
        return "custom"

    def set_input_transform(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Replace the (3, 3) / (3,) per-pixel affine map from RGB [0, 1] to network input."""
        with torch.no_grad():
            self.input_weight.copy_(weight)
            self.input_bias.copy_(bias)

    # ------------------------------------------------------------------ weights

    def load_weights(self, weights: str | Path) -> None:
        """Initialise from "imagenet" or a weight file whose format is recognised from its keys."""
        if str(weights) == "imagenet":
            enum = torchvision.models.VGG19_Weights.IMAGENET1K_V1
            self._load_vgg(enum.get_state_dict(progress=True), "torchvision VGG19_Weights.IMAGENET1K_V1")
            return
        state = load_state_dict_file(weights)
        if "features.0.weight" in state:
            self._load_vgg(state, str(weights))
        elif any(_CMU_PREFIX.sub("", key) == "conv1_1.weight" for key in state):
            self.set_input_transform(*caffe_input_transform())
            self._assign(convert_cmu_body_state_dict(state, self.num_stages), required=self._parameter_names())
            logger.info("pose stream: CMU OpenPose body weights (%d stages) from %s", self.num_stages, weights)
        elif "front.conv1_1.weight" in state:
            self._load_own(state)
            logger.info("pose stream: weights from %s (input convention %s)", weights, self.input_convention)
        else:
            sample = sorted(state)[:5]
            raise ValueError(
                f"{weights}: not a torchvision VGG-19, CMU OpenPose body or OpenPoseBody state dict "
                f"(first keys: {sample})"
            )

    def _parameter_names(self) -> list[str]:
        return [name for name, _ in self.named_parameters()]

    def _load_vgg(self, state: Mapping[str, torch.Tensor], source: str) -> None:
        front = vgg19_front_from_torchvision(state)
        self._assign(front, required=list(front))
        # ImageNet VGG filters expect normalised RGB; the CPM convs and stages stay random and learn on top.
        self.set_input_transform(*imagenet_input_transform())
        logger.info("pose stream: VGG-19 conv1_1..conv4_2 from %s; CPM convs and stages randomly initialised", source)

    def _load_own(self, state: Mapping[str, torch.Tensor]) -> None:
        stage_key = re.compile(r"^stages\.(\d+)\.")
        kept: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            match = stage_key.match(key)
            if match is not None and int(match.group(1)) >= self.num_stages:
                continue
            kept[key] = value
        if len(kept) < len(state):
            logger.info("pose weights: ignored %d tensors of stages after %d", len(state) - len(kept), self.num_stages)
        if "input_weight" in kept and "input_bias" in kept:
            self.set_input_transform(kept.pop("input_weight"), kept.pop("input_bias"))
        else:
            logger.warning("pose weights carry no input transform; keeping %s", self.input_convention)
        self._assign(kept, required=self._parameter_names())

    def _assign(self, tensors: Mapping[str, torch.Tensor], required: list[str]) -> None:
        """Copy ``tensors`` (our names) into the parameters; every name in ``required`` must be there.

        Tensors this module has no parameter for (a branch the output mode does not build) are skipped.
        """
        params = dict(self.named_parameters())
        missing = [name for name in required if name not in tensors]
        mismatched = [
            f"{name}: expected {tuple(params[name].shape)}, got {tuple(value.shape)}"
            for name, value in tensors.items()
            if name in params and value.shape != params[name].shape
        ]
        if missing or mismatched:
            raise ValueError(f"pose weights do not fit: missing {missing or 'none'}; mis-shaped {mismatched or 'none'}")
        skipped = [name for name in tensors if name not in params]
        with torch.no_grad():
            for name, value in tensors.items():
                if name in params:
                    params[name].copy_(value)
        if skipped:
            logger.info("pose weights: %d tensors belong to branches this output mode does not build", len(skipped))

    # ------------------------------------------------------------------ forward

    def to_network_input(self, x: torch.Tensor) -> torch.Tensor:
        """RGB [0, 1] (B, 3, H, W) -> the input convention of the weights (B, 3, H, W), same dtype."""
        weight = self.input_weight.to(x.dtype)[:, :, None, None]
        return F.conv2d(x, weight, self.input_bias.to(x.dtype))

    def features(self, z: torch.Tensor) -> torch.Tensor:
        """Network input (B, 3, H, W) -> F (B, 128, H/8, W/8)."""
        for name, _, _, _ in FRONT_LAYERS:
            z = F.relu(self.front[name](z))
            if name in POOL_AFTER:
                z = F.max_pool2d(z, kernel_size=2, stride=2)
        return z

    def forward_network(self, z: torch.Tensor) -> torch.Tensor:
        """Already converted network input (B, 3, H, W) -> (B, out_channels, H/8, W/8)."""
        feats = self.features(z)
        stage_input = feats
        paf = parts = hidden = None
        for stage in self.stages:
            assert isinstance(stage, _Stage)
            if stage.paf is not None:
                _, paf = stage.paf(stage_input)
            if stage.parts is not None:
                hidden, parts = stage.parts(stage_input)
            if stage is not self.stages[-1]:
                assert paf is not None and parts is not None
                stage_input = torch.cat([paf, parts, feats], dim=1)
        if self.output == "parts+pafs":
            assert parts is not None and paf is not None
            return torch.cat([parts, paf], dim=1)
        result = {"features": hidden, "parts": parts, "pafs": paf}[self.output]
        assert result is not None
        return result

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] (B, 3, H, W) -> (B, out_channels, H/8, W/8)."""
        return self.forward_network(self.to_network_input(x))

"""Strict import of torchreid model-zoo OSNet weights (legacy torch pickles) into this package's OSNet models.

    model = load_torchreid_checkpoint("osnet_x0_25_market1501.pth", arch="osnet_x0_25")
    emb = model.embed(torch.rand(4, 3, 256, 128))   # (4, 512), torchreid's test feature, L2-normalised

The file is read with ``torch.load(weights_only=True)``, so no code in it runs. Keys map one to one: torchreid's
``<name>`` -> our ``backbone.<name>``, ``classifier.*`` -> ``classifier.*``. The load is strict: every tensor of
the file (BatchNorm ``num_batches_tracked`` counters included) must land on a parameter or buffer of ours with the
same shape, and every one of ours must be filled, except the preprocessing constants ``pixel_mean``/``pixel_std``
that no torchreid file holds (they come from the constructor: ImageNet mean/std, which torchreid trains with).
Anything else raises ValueError listing the unused, missing and mis-shaped keys.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from model.base import DEFAULT_INPUT_SIZE
from model.osnet import OSNET_ARCHITECTURES, OSNetReID

logger = logging.getLogger(__name__)

# Tensors of ours that no torchreid file holds; the constructor sets them.
OWN_TENSORS: frozenset[str] = frozenset({"pixel_mean", "pixel_std"})
BACKBONE_PREFIX = "backbone."
CLASSIFIER_PREFIX = "classifier."
# Stem width (conv1.conv.weight's first dimension) -> architecture, to name the right one when a file mismatches.
_STEM_WIDTH_TO_ARCH: dict[int, str] = {cls.CHANNELS[0]: name for name, cls in OSNET_ARCHITECTURES.items()}


@dataclass(frozen=True)
class KeyMatch:
    """How a torchreid state dict lines up with a model: file key -> our key for every tensor used, plus problems.

    missing holds torchreid names the file lacks (or our keys torchreid has no name for, e.g. a BNNeck);
    mismatched holds (file key, file tensor, our tensor), tensors described as "(shape) dtype", for keys present
    on both sides with different shapes or kinds (floating vs integer).
    """

    used: dict[str, str]
    unused: list[str]
    missing: list[str]
    mismatched: list[tuple[str, str, str]]

    @property
    def ok(self) -> bool:
        return not (self.unused or self.missing or self.mismatched)


def load_torchreid_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a torchreid weight file without running pickled code -> {key: tensor} with "module." stripped.

    Accepts a plain state dict (the model-zoo releases) or torchreid's training checkpoint {"state_dict": ...}.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"torchreid weight file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise ValueError(f"{path}: not a loadable torch weight file ({exc})") from exc
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict, found {type(obj).__name__}")
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        # DataParallel-trained files prefix every key with "module.".
        name = key[len("module.") :] if key.startswith("module.") else key
        if name in state:
            raise ValueError(f"{path}: key {name!r} appears both with and without the 'module.' prefix")
        state[name] = value
    logger.info("read %d tensors from %s", len(state), path)
    return state


def torchreid_name(our_key: str) -> str | None:
    """Our state-dict key -> torchreid's name for it, or None when torchreid has no such tensor (e.g. a BNNeck)."""
    if our_key.startswith(BACKBONE_PREFIX):
        return our_key[len(BACKBONE_PREFIX) :]
    if our_key.startswith(CLASSIFIER_PREFIX):
        return our_key
    return None


def match_keys(model: OSNetReID, state: Mapping[str, torch.Tensor]) -> KeyMatch:
    """Line ``state`` (torchreid names) up with ``model``'s state dict, without changing either."""
    ours = {k: v for k, v in model.state_dict().items() if k not in OWN_TENSORS}
    expected: dict[str, str] = {}
    missing: list[str] = []
    for our_key in ours:
        their_key = torchreid_name(our_key)
        if their_key is None:
            missing.append(our_key)
        else:
            expected[their_key] = our_key
    missing += [their for their in expected if their not in state]
    unused = [key for key in state if key not in expected]
    mismatched: list[tuple[str, str, str]] = []
    used: dict[str, str] = {}
    for their_key, our_key in expected.items():
        if their_key not in state:
            continue
        theirs, mine = state[their_key], ours[our_key]
        if theirs.shape != mine.shape or theirs.is_floating_point() != mine.is_floating_point():
            mismatched.append((their_key, _describe_tensor(theirs), _describe_tensor(mine)))
        else:
            used[their_key] = our_key
    return KeyMatch(used=used, unused=sorted(unused), missing=sorted(missing), mismatched=mismatched)


def _describe_tensor(tensor: torch.Tensor) -> str:
    return f"{tuple(tensor.shape)} {str(tensor.dtype).removeprefix('torch.')}"


def _describe(arch: str, match: KeyMatch, state: Mapping[str, torch.Tensor]) -> str:
    def head(items: Sequence[object], limit: int = 8) -> str:
        shown = ", ".join(str(item) for item in items[:limit])
        return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")

    parts = [f"torchreid weights do not fit {arch} strictly ({len(match.used)} of {len(state)} tensors usable)"]
    if match.unused:
        parts.append(f"{len(match.unused)} unused in the file: {head(match.unused)}")
    if match.missing:
        parts.append(f"{len(match.missing)} missing from the file: {head(match.missing)}")
    if match.mismatched:
        shapes = [f"{key} file {a} vs model {b}" for key, a, b in match.mismatched]
        parts.append(f"{len(match.mismatched)} mis-shaped: {head(shapes, 4)}")
    stem = state.get("conv1.conv.weight")
    if stem is not None and stem.dim() == 4:
        guess = _STEM_WIDTH_TO_ARCH.get(int(stem.shape[0]))
        if guess is not None and guess != arch:
            parts.append(f"the file's stem has {stem.shape[0]} channels: it looks like {guess}")
    return "; ".join(parts)


def import_torchreid(
    arch: str, state: Mapping[str, torch.Tensor], input_size: Sequence[int] = DEFAULT_INPUT_SIZE
) -> OSNetReID:
    """Build ``arch`` (neck "none", classifier sized and biased as in the file) and load ``state`` strictly.

    Returns the model in eval mode. Raises ValueError on an unknown arch or any unused/missing/mis-shaped key.
    """
    if arch not in OSNET_ARCHITECTURES:
        raise ValueError(f"no torchreid import for {arch!r}; valid: {', '.join(sorted(OSNET_ARCHITECTURES))}")
    classifier = state.get("classifier.weight")
    if classifier is not None and classifier.dim() != 2:
        raise ValueError(f"classifier.weight must be 2-D (classes, features), got {tuple(classifier.shape)}")
    num_classes = int(classifier.shape[0]) if classifier is not None else 0
    model = OSNET_ARCHITECTURES[arch](
        num_classes=num_classes,
        input_size=input_size,
        neck="none",
        classifier_bias="classifier.bias" in state,
    )
    match = match_keys(model, state)
    if not match.ok:
        raise ValueError(_describe(arch, match, state))
    own = model.state_dict()
    new_state = {our: state[their].to(own[our].dtype) for their, our in match.used.items()}
    new_state.update({key: own[key] for key in OWN_TENSORS})
    # strict=True double-checks our own bookkeeping: every key of ours is in new_state and nothing else.
    model.load_state_dict(new_state, strict=True)
    logger.info("imported %s: %d torchreid tensors, %d classes", arch, len(match.used), num_classes)
    return model.eval()


def load_torchreid_checkpoint(
    path: str | Path, arch: str = "osnet_x0_25", input_size: Sequence[int] = DEFAULT_INPUT_SIZE
) -> OSNetReID:
    """A torchreid .pth file -> our ``arch`` model with every tensor of the file loaded, in eval mode."""
    return import_torchreid(arch, load_torchreid_state_dict(path), input_size=input_size)

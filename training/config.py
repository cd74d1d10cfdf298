"""Typed, frozen training configuration: YAML file + dotted command-line overrides, unknown keys rejected.

    config = load_config("configs/soccernet.yaml", ["optim.lr=0.0005", "model.name=resnet50", "run.amp=false"])

Overrides are parsed as JSON when they can be (numbers, true/false, null, lists) and kept as strings otherwise;
every value is checked against the field's type, so "yes" is not a boolean and a typo in a key is an error.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from training.losses import LossConfig

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message names the dotted key."""


class _StrictLoader(yaml.SafeLoader):
    """YAML 1.2-style scalars: only true/false are booleans (PyYAML's YAML 1.1 default also turns yes/no/on/off
    into booleans, which would let ``amp: off`` slip through as False), and ``1e-3`` is a float, not a string."""


_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in ("tag:yaml.org,2002:bool",
                                                                        "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_StrictLoader)  # safe: _StrictLoader is a SafeLoader subclass


@dataclass(frozen=True)
class _Override:
    """A command-line value: parsed as JSON, with the raw text kept for string fields (``run.out_dir=2024``)."""

    parsed: Any
    raw: str


@dataclass(frozen=True)
class DataConfig:
    # soccernet: the SoccerNet-ReID tree; market1501: Market-1501 layout; cuhk03: one folder of <pid>_<idx>.jpg
    format: str = "soccernet"
    root: str = ""
    eval_split: str = "valid"  # SoccerNet: valid | test | challenge
    height: int = 256
    width: int = 128
    # CUHK03: [low, high) raw pid ranges; evaluation uses camera A as gallery and camera B as queries
    cuhk03_train_pids: list[int] = field(default_factory=lambda: [0, 1000])
    cuhk03_eval_pids: list[int] = field(default_factory=lambda: [1000, 1467])
    workers: int = 2
    flip_p: float = 0.5
    pad: int = 10
    erase_p: float = 0.5


@dataclass(frozen=True)
class ModelConfig:
    name: str = "pose_bilinear"
    # Extra build_model keyword arguments (embedding_dim, pose_stages, layer_wise, pretrained, ...):
    # validated by the architecture itself.
    options: dict[str, Any] = field(default_factory=dict)
    # Start from an existing checkpoint of ours (e.g. imported OSNet weights); its classifier is replaced.
    init_checkpoint: str | None = None


@dataclass(frozen=True)
class OptimConfig:
    optimizer: str = "adam"
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    momentum: float = 0.9
    epochs: int = 60
    steps_per_epoch: int | None = None  # None: one pass of the sampler
    warmup_steps: int = 500
    schedule: str = "cosine"  # cosine | step | constant
    step_milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions of training
    step_gamma: float = 0.1
    grad_clip: float | None = 5.0


@dataclass(frozen=True)
class SamplerConfig:
    identities_per_batch: int = 16  # P
    instances_per_identity: int = 4  # K
    within_group: bool = True  # SoccerNet: identities of one action per batch


@dataclass(frozen=True)
class RunConfig:
    out_dir: str = "runs/reid"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast on GPU; ignored on CPU
    channels_last: bool = True
    log_every: int = 20
    eval_every_epochs: int = 5
    eval_batch_size: int = 128
    resume: bool = True  # continue from out_dir/state.pt when present
    progress: bool = True


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_value(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if isinstance(value, _Override):
        options = typing.get_args(hint) if origin in (typing.Union, types.UnionType) else (hint,)
        # A string field takes the text as typed, even when it happens to parse as JSON ("2024", "true").
        value = value.raw if str in options and value.parsed is not None else value.parsed
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(hint):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return _check_value(value, option, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: {value!r} fits none of {hint}")
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return build_dataclass(hint, value, key)  # type: ignore[arg-type]
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_hint,) = typing.get_args(hint) or (Any,)
        return [_check_value(v, item_hint, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported field type {hint}")


def build_dataclass(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Instantiate a (nested) dataclass from a mapping, rejecting unknown keys and wrongly typed values."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        where = f" in {prefix}" if prefix else ""
        raise ConfigError(f"unknown key(s) {unknown}{where}; valid: {sorted(names)}")
    kwargs = {
        name: _check_value(value, hints[name], f"{prefix}.{name}" if prefix else name) for name, value in data.items()
    }
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optim.lr=0.001' -> (['optim', 'lr'], 0.001): JSON when the value parses as JSON, else the raw string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form dotted.key=value")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if not all(path):
        raise ConfigError(f"override {text!r}: empty key segment")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return path, value


def merge_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``data[path[0]][path[1]]... = value``, creating sections on the way."""
    node = data
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if node is None:  # "model:" with nothing under it in the YAML file
            node = {}
        if not isinstance(node, dict):
            raise ConfigError(f"override {'.'.join(path)}: {part} is not a section")
    node[path[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults <- YAML file <- dotted overrides, validated into a frozen TrainConfig."""
    data: dict[str, Any] = {}
    if path is not None:
        loaded = _yaml_load(Path(path).read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        data = loaded or {}
    for text in overrides or []:
        key_path, value = parse_override(text)
        raw = text.split("=", 1)[1]
        merge_override(data, key_path, value if isinstance(value, str) else _Override(value, raw))
    return build_dataclass(TrainConfig, data)


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (the run folder's record of what was trained)."""
    Path(path).write_text(yaml.safe_dump(config.as_dict(), sort_keys=False))

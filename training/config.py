"""Typed, frozen training configuration (pydantic): YAML file + dotted command-line overrides, unknown keys rejected.

    config = load_config("training/configs/soccernet.yaml", ["optim.lr=0.0005", "model.options.embedding_dim=512"])

Overrides are parsed as JSON when they can be (numbers, true/false, null, lists, mappings) and kept as strings
otherwise. A field typed ``str`` takes the text as typed ("run.out_dir=2024" stays "2024"); keys inside the
free-form ``model.options`` mapping get the parsed value (``model.options.pretrained=null`` -> None). Every value is
then checked strictly against the field's type, so "yes" is not a boolean and a typo in a key is an error.
"""

from __future__ import annotations

import json
import logging
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

logger = logging.getLogger(__name__)


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


class Section(BaseModel):
    """Base of every config section: strict types (no "1" for 1, no 1 for true), unknown keys rejected, frozen."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class LossConfig(Section):
    id_weight: float = 1.0
    triplet_weight: float = 1.0
    triplet_margin: float = 0.3
    label_smoothing: float = 0.1
    # Weight of each layer-wise similarity triplet term; 1.0 sums them with the main terms, as the seed does.
    layer_weight: float = 1.0


class DataConfig(Section):
    # soccernet: the SoccerNet-ReID tree; market1501: Market-1501 layout; cuhk03: one folder of <pid>_<idx>.jpg
    format: Literal["soccernet", "market1501", "cuhk03"] = "soccernet"
    root: str = ""
    # SoccerNet: the split that picks the checkpoint (and calibrates its threshold) during training ...
    valid_split: Literal["valid", "test"] = "valid"
    # ... and the split reported once, with the selected checkpoint, after training (null: none).
    test_split: Literal["valid", "test"] | None = None
    # Share of the training actions used (whole actions, drawn with train_fraction_seed); 1.0 uses all.
    train_fraction: float = Field(default=1.0, gt=0.0, le=1.0)
    train_fraction_seed: int = 0
    height: int = 256
    width: int = 128
    # CUHK03: [low, high) raw pids; evaluation uses camera A as gallery and camera B as queries
    cuhk03_train_pids: list[int] = Field(default_factory=lambda: [0, 1000])
    cuhk03_eval_pids: list[int] = Field(default_factory=lambda: [1000, 1467])
    workers: int = 2
    flip_p: float = 0.5
    pad: int = 10
    erase_p: float = 0.5

    @model_validator(mode="after")
    def _distinct_splits(self) -> DataConfig:
        if self.test_split is not None and self.test_split == self.valid_split:
            raise ValueError(f"test_split must differ from valid_split (both {self.valid_split!r}): the split that "
                             "picks the checkpoint cannot also report it")
        return self


class ModelConfig(Section):
    name: str = "pose_bilinear"
    # Extra build_model keyword arguments (embedding_dim, pose_stages, layer_wise, pretrained, pose_weights, ...):
    # validated by the architecture itself.
    options: dict[str, Any] = Field(default_factory=dict)
    # Start from an existing checkpoint of ours (e.g. imported OSNet weights); its classifier is replaced.
    init_checkpoint: str | None = None


class OptimConfig(Section):
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 3.5e-4
    # Learning-rate multipliers by parameter-name prefix ({"pose": 0.1}: the pose stream learns 10x slower).
    lr_mult: dict[str, float] = Field(default_factory=dict)
    weight_decay: float = 5e-4
    momentum: float = 0.9
    epochs: int = 60
    steps_per_epoch: int | None = None  # None: one pass of the sampler
    warmup_steps: int = 500
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    step_milestones: list[float] = Field(default_factory=lambda: [0.5, 0.75])  # fractions of training
    step_gamma: float = 0.1
    grad_clip: float | None = 5.0


class SamplerConfig(Section):
    identities_per_batch: int = 16  # P
    instances_per_identity: int = 4  # K
    within_group: bool = True  # SoccerNet: identities of one action per batch, remainders mixed across games


class RunConfig(Section):
    out_dir: str = "runs/reid"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast on GPU; ignored on CPU
    channels_last: bool = True
    log_every: int = 20
    eval_every_epochs: int = 5
    eval_batch_size: int = 128
    # best: the checkpoint with the best mAP on data.valid_split; last: the final epoch's
    select: Literal["best", "last"] = "best"
    resume: bool = True  # continue from out_dir/state.pt when present
    progress: bool = True


class TrainConfig(Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="python")


# ------------------------------------------------------------------------------------------- overrides

_MESSAGES = {
    "bool_type": "expected true or false",
    "int_type": "expected an integer",
    "float_type": "expected a number",
    "string_type": "expected a string",
    "list_type": "expected a list",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
}


def _format_errors(exc: ValidationError) -> str:
    unknown: dict[str, list[str]] = {}
    lines: list[str] = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        if error["type"] == "extra_forbidden":
            unknown.setdefault(".".join(loc[:-1]), []).append(loc[-1])
            continue
        key = _dotted(error["loc"])
        message = _MESSAGES.get(error["type"], error["msg"])
        lines.append(f"{key}: {message}, got {error.get('input')!r}")
    for section, keys in unknown.items():
        where = f" in {section}" if section else ""
        lines.insert(0, f"unknown key(s) {sorted(keys)}{where}; valid: {_valid_keys(section)}")
    return "; ".join(dict.fromkeys(lines))


def _dotted(loc: tuple[int | str, ...]) -> str:
    """("data", "cuhk03_train_pids", 1) -> "data.cuhk03_train_pids[1]"; union member tags are dropped."""
    key = ""
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
        elif part in _UNION_TAGS or part.startswith(("literal[", "function-")):
            continue  # a union member's tag ("optim.grad_clip.float"), not a key
        else:
            key += f".{part}" if key else part
    return key or "config"


_UNION_TAGS = frozenset({"float", "int", "str", "bool", "none"})


def _valid_keys(section: str) -> list[str]:
    model: Any = TrainConfig
    for part in section.split(".") if section else []:
        annotation = model.model_fields[part].annotation if part in getattr(model, "model_fields", {}) else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(model.model_fields)


def _field_annotation(path: list[str]) -> Any:
    """The declared type at a dotted path; None inside a free-form mapping or at an unknown key."""
    model: Any = TrainConfig
    annotation: Any = None
    for part in path:
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
        model = annotation
    return annotation


def _takes_text(annotation: Any) -> bool:
    """Whether a field typed ``annotation`` accepts a plain string (str, str | None)."""
    if annotation is str:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return str in typing.get_args(annotation)
    return False


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optim.lr=0.001' -> (['optim', 'lr'], 0.001).

    The value is JSON when it parses as JSON, else the raw string; a field declared ``str`` keeps the raw text
    (except ``null`` where the field is optional). Keys under ``model.options`` get the parsed value as is.
    """
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form dotted.key=value")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if not all(path):
        raise ConfigError(f"override {text!r}: empty key segment")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return path, raw
    if _takes_text(_field_annotation(path)) and value is not None:
        return path, raw
    return path, value


def merge_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``data[path[0]][path[1]]... = value``, creating sections (also where the YAML left one empty/null)."""
    node = data
    for depth, part in enumerate(path[:-1]):
        if node.get(part) is None:  # absent, or "model:" with nothing under it in the YAML file
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"override {'.'.join(path)}: {'.'.join(path[: depth + 1])} is not a section")
    node[path[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults <- YAML file <- dotted overrides, validated into a frozen TrainConfig."""
    data: dict[str, Any] = {}
    if path is not None:
        loaded = _yaml_load(Path(path).read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        data = loaded or {}
    # An empty section ("model:" alone) means "all defaults", not null.
    data = {key: ({} if value is None else value) for key, value in data.items()}
    for text in overrides or []:
        merge_override(data, *parse_override(text))
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from None


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (the run folder's record of what was trained)."""
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))

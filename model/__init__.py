"""Re-id networks and the checkpoint format. Knows nothing of HTTP or data sets.

The networks need torch; the checkpoint's spec (model/spec.py), the exported graph's metadata (model/graph.py),
thresholds and pooling do not, so the serving install without torch (``serve`` extra) can import them. The
names below are therefore resolved on first use (PEP 562): ``import model.spec`` never imports torch, while
``from model import build_model`` does, as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from model.base import ReIDModel, ReIDOutput
    from model.checkpoint import load_checkpoint, save_checkpoint
    from model.factory import ARCHITECTURES, build_model
    from model.spec import FORMAT_VERSION, CheckpointError, CheckpointSpec, Preprocess, read_checkpoint_spec

# name -> the module that defines it; torch is imported only for the ones from base, checkpoint and factory.
_WHERE = {
    "ARCHITECTURES": "model.factory",
    "build_model": "model.factory",
    "ReIDModel": "model.base",
    "ReIDOutput": "model.base",
    "load_checkpoint": "model.checkpoint",
    "save_checkpoint": "model.checkpoint",
    "FORMAT_VERSION": "model.spec",
    "CheckpointError": "model.spec",
    "CheckpointSpec": "model.spec",
    "Preprocess": "model.spec",
    "read_checkpoint_spec": "model.spec",
}

__all__ = [
    "ARCHITECTURES",
    "FORMAT_VERSION",
    "CheckpointError",
    "CheckpointSpec",
    "Preprocess",
    "ReIDModel",
    "ReIDOutput",
    "build_model",
    "load_checkpoint",
    "read_checkpoint_spec",
    "save_checkpoint",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))

"""Re-id networks and the checkpoint format. Imports torch only; knows nothing of HTTP or data sets."""

from model.base import Preprocess, ReIDModel, ReIDOutput
from model.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    CheckpointSpec,
    load_checkpoint,
    read_checkpoint_spec,
    save_checkpoint,
)
from model.factory import ARCHITECTURES, build_model

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

"""Device selection shared by training and serving.

    resolve_device("auto")      # cuda:0 when torch sees a GPU, else cpu
    resolve_device("auto", 3)   # cuda:3 (the local rank of a torchrun worker)
    resolve_device("cuda:1")    # checked against the GPUs present
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' -> the ``local_rank``-th GPU when CUDA is available, else the CPU; explicit names are validated.

    Raises ValueError for a CUDA device that is absent, so a misconfiguration fails at start, not at first use.
    """
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but torch sees no CUDA device")
        index = device.index if device.index is not None else local_rank
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        device = torch.device("cuda", index)
    return device


def autocast_for(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA when enabled; nothing on the CPU (bf16 matmuls there are slower, not faster).

    bf16 keeps fp32's range, so no loss scaling is needed and embeddings do not overflow.
    """
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()

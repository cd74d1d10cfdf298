"""Device selection shared by training and the service (CPU-only here; CUDA is faked only where it must be)."""

from __future__ import annotations

import pytest
import torch

from model.device import resolve_device


def test_auto_is_the_cpu_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_auto_picks_the_local_rank_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert resolve_device("auto", local_rank=3) == torch.device("cuda", 3)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:2") == torch.device("cuda", 2)
    with pytest.raises(ValueError, match="only 4 CUDA"):
        resolve_device("cuda:4")


def test_cuda_without_a_gpu_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA"):
        resolve_device("cuda:0")

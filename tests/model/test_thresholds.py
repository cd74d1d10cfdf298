"""Thresholds per query size bucket (model/thresholds.py) and their place in the checkpoint metadata."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from model import build_model, save_checkpoint
from model.checkpoint import METADATA_KEY, CheckpointError, read_checkpoint_spec
from model.thresholds import bucket_of, bucket_range, parse_buckets, threshold_for

BUCKETS = {"1": 0.5, "2-4": 0.6, "5+": 0.7}


def test_bucket_keys() -> None:
    assert bucket_range("1") == (1, 1)
    assert bucket_range("2-4") == (2, 4)
    assert bucket_range("5+") == (5, None)
    for bad in ("0", "4-2", "x", "-3", "2-", "", "1.5"):
        with pytest.raises(ValueError, match="size bucket"):
            bucket_range(bad)


def test_threshold_per_size_and_fallback() -> None:
    assert [threshold_for(n, BUCKETS, 0.1) for n in (1, 2, 4, 5, 50)] == [0.5, 0.6, 0.6, 0.7, 0.7]
    partial = {"2-3": 0.6}
    assert threshold_for(1, partial, 0.1) == 0.1 and threshold_for(4, partial, 0.1) == 0.1
    assert bucket_of(3, partial) == "2-3" and bucket_of(7, partial) is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"1-3": 0.5, "3+": 0.6}, "overlap"),
        ({"1": 1.5}, r"\[-1, 1\]"),
        ({"1": "high"}, "not a number"),
        ({"1": True}, "not a number"),
        ({"one": 0.5}, "size bucket"),
    ],
)
def test_bad_buckets_are_refused(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_buckets(raw)


def test_checkpoint_keeps_bucket_thresholds_and_reads_old_files(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("osnet_x0_25", num_classes=0, input_size=(64, 32)).eval()
    path = tmp_path / "m.safetensors"
    save_checkpoint(model, path, threshold=0.5, thresholds=BUCKETS)
    spec = read_checkpoint_spec(path)
    assert spec.threshold == 0.5 and spec.thresholds == BUCKETS

    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()[METADATA_KEY])
    # A checkpoint written before per-size thresholds existed: no "thresholds" key at all.
    del meta["thresholds"]
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(path)), str(old), metadata={METADATA_KEY: json.dumps(meta)})
    assert read_checkpoint_spec(old).thresholds == {} and read_checkpoint_spec(old).threshold == 0.5

    meta["thresholds"] = {"1-3": 0.5, "2+": 0.6}
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(path)), str(bad), metadata={METADATA_KEY: json.dumps(meta)})
    with pytest.raises(CheckpointError, match="overlap"):
        read_checkpoint_spec(bad)

"""Thresholds per query size (training/calibration/threshold.py): tracklets sampled from a validation split, scored
the way the service scores them, one threshold calibrated per size bucket. Synthetic seeded embeddings: each identity is
a random direction, each crop that direction plus noise, so pooling more crops must find more right answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.calibration.threshold import (
    bucket_thresholds,
    calibrate_size_buckets,
    calibrate_tracklet_thresholds,
    calibrate_tracklets_with_distractors,
    sample_tracklets,
    top1_from_embeddings,
    tracklet_top1,
)

DIM = 32


def split(people: int = 60, crops: int = 6, noise: float = 1.6, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(people, DIM))
    q_pids = np.repeat(np.arange(people), crops)
    q_emb = centres[q_pids] + noise * rng.normal(size=(people * crops, DIM))
    in_gallery = np.arange(int(people * 0.7))  # the rest are distractors
    g_emb = centres[in_gallery] + 0.3 * rng.normal(size=(len(in_gallery), DIM))
    return {"q_emb": q_emb, "q_pids": q_pids, "g_emb": g_emb, "g_pids": in_gallery}


def test_sample_tracklets_stay_within_one_identity_and_group() -> None:
    pids = np.array([1, 1, 1, 1, 2, 2, 2, 3])
    groups = np.array(["a", "a", "b", "b", "a", "a", "a", "a"])
    rng = np.random.default_rng(0)
    two = sample_tracklets(pids, 2, rng, per_identity=5, q_groups=groups)
    assert all(len(set(pids[t])) == 1 and len(set(groups[t])) == 1 and len(t) == 2 for t in two)
    assert len({tuple(t) for t in two}) == len(two)  # distinct subsets
    # identity 1 has one pair per group, identity 2 three distinct pairs, identity 3 a single crop: none
    assert len(two) == 1 + 1 + 3
    # Without groups only identity 1 has 4 crops: exactly one tracklet of 4, its four crops.
    assert [sorted(t.tolist()) for t in sample_tracklets(pids, 4, rng)] == [[0, 1, 2, 3]]
    with pytest.raises(ValueError, match=">= 1"):
        sample_tracklets(pids, 0, rng)


def test_one_crop_tracklets_score_like_single_crops() -> None:
    data = split()
    singles = [np.array([i]) for i in range(len(data["q_pids"]))]
    pooled = tracklet_top1(data["q_emb"], data["q_pids"], singles, data["g_emb"], data["g_pids"])
    plain = top1_from_embeddings(data["q_emb"], data["q_pids"], data["g_emb"], data["g_pids"])
    assert np.allclose(pooled[0], plain[0])
    assert np.array_equal(pooled[1], plain[1]) and np.array_equal(pooled[2], plain[2])


def test_pooling_finds_more_and_each_bucket_gets_its_threshold() -> None:
    data = split()
    rng = np.random.default_rng(1)
    accuracy = {}
    for size in (1, 5):
        tracklets = sample_tracklets(data["q_pids"], size, rng, per_identity=3)
        _, correct, has_match = tracklet_top1(data["q_emb"], data["q_pids"], tracklets, data["g_emb"], data["g_pids"])
        accuracy[size] = correct[has_match].mean()
    assert accuracy[5] > accuracy[1] + 0.1

    by_bucket = calibrate_tracklet_thresholds(
        data["q_emb"], data["q_pids"], data["g_emb"], data["g_pids"], max_size=6, per_identity=2
    )
    assert list(by_bucket) == ["1", "2-4", "5+"]
    # 2 tracklets per identity and size; size 6 has only one subset of the 6 crops: 60 * 2 + 60 in "5+"
    assert by_bucket["1"].num_queries == 60 * 2 and by_bucket["5+"].num_queries == 60 * 2 + 60
    thresholds = bucket_thresholds(by_bucket)
    # pooled queries are closer to their gallery match: the calibrated cut moves up with the query size
    assert thresholds["1"] < thresholds["5+"]
    assert all(c.f1 > 0 for c in by_bucket.values())


def test_size_buckets_leave_out_empty_buckets() -> None:
    scores = np.array([0.9, 0.2, 0.8, 0.3])
    correct = np.array([True, False, True, False])
    has_match = np.array([True, False, True, True])
    out = calibrate_size_buckets(scores, correct, has_match, np.array([1, 1, 3, 3]), ("1", "2-4", "5+"))
    assert set(out) == {"1", "2-4"} and out["1"].threshold == pytest.approx(0.55)


def test_export_keeps_the_size_thresholds(tmp_path: Path) -> None:
    from model.checkpoint import read_checkpoint_spec
    from tests.support.checkpoints import make_tiny_checkpoint
    from training.cli import export_for_serving

    source = make_tiny_checkpoint(tmp_path / "src.safetensors", threshold=0.4, thresholds={"1": 0.4, "2+": 0.5})
    export_for_serving(source, tmp_path / "out.safetensors")
    spec = read_checkpoint_spec(tmp_path / "out.safetensors")
    assert (spec.threshold, spec.thresholds) == (0.4, {"1": 0.4, "2+": 0.5})


def test_with_distractors_hides_identities_per_group() -> None:
    data = split(people=40)
    # the same pids reused in two groups (as SoccerNet actions do): identities are (group, pid) pairs
    q_groups = np.where(data["q_pids"] < 20, "action-a", "action-b")
    q_pids = data["q_pids"] % 20
    g_groups = np.where(data["g_pids"] < 20, "action-a", "action-b")
    g_pids = data["g_pids"] % 20
    by_bucket = calibrate_tracklets_with_distractors(
        data["q_emb"], q_pids, data["g_emb"], g_pids, q_groups=q_groups, g_groups=g_groups, max_size=5
    )
    assert list(by_bucket) == ["1", "2-4", "5+"]
    assert all(0 < c.f1 <= 1 and c.num_queries > 0 for c in by_bucket.values())
    # half the identities are hidden: with (group, pid) identities a perfect recall needs no more than that
    assert by_bucket["5+"].accuracy > 0.5
    with pytest.raises(ValueError, match="both"):
        calibrate_tracklets_with_distractors(data["q_emb"], q_pids, data["g_emb"], g_pids, q_groups=q_groups)


def test_export_keeps_the_model_card(tmp_path: Path) -> None:
    """reid-export's serving checkpoint keeps the provenance and the calibration card (the default model's)."""
    from model import load_checkpoint, save_checkpoint
    from model.checkpoint import read_checkpoint_spec
    from tests.support.checkpoints import make_tiny_checkpoint
    from training.cli import export_for_serving

    model, _ = load_checkpoint(make_tiny_checkpoint(tmp_path / "tiny.safetensors"))
    provenance = {"initial_weights": [{"file": "w.pth", "sha256": "ab", "licence": "MIT"}]}
    calibration = {"objective": "recall at precision >= 0.9", "threshold": 0.7}
    save_checkpoint(model, tmp_path / "src.safetensors", threshold=0.7, provenance=provenance, calibration=calibration)
    export_for_serving(tmp_path / "src.safetensors", tmp_path / "out.safetensors")
    spec = read_checkpoint_spec(tmp_path / "out.safetensors")
    assert spec.provenance == provenance and spec.calibration == calibration

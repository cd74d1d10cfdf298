"""reid-calibrate: precision-targeted threshold choice, simulated collections, the folder reader and the CLI
end to end on tiny data (a real checkpoint, real PNG crops), the model card in the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model import read_checkpoint_spec
from tests.support.checkpoints import make_tiny_checkpoint
from tests.support.images import player_crop
from training.calibration.simulated import EXIT_INFEASIBLE, CollectionShape, calibrate_main, simulate_collections
from training.calibration.threshold import calibrate_for_precision, operating_point_at
from training.data.readers import read_folder
from training.evaluation.evaluate import Embeddings


def _direct(threshold: float, scores: np.ndarray, correct: np.ndarray, has_match: np.ndarray) -> tuple[float, float]:
    """Precision and recall of 'answer when score >= threshold', computed the plain way."""
    answered = scores >= threshold
    good = answered & correct & has_match
    precision = good.sum() / answered.sum() if answered.sum() else 0.0
    return float(precision), float(good.sum() / has_match.sum())


def test_highest_recall_at_the_target_precision() -> None:
    # Sorted by score: C C C C W C A C A A (C correct, W wrong top-1 of a registered person, A absent person).
    scores = np.array([0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5])
    correct = np.array([1, 1, 1, 1, 0, 1, 0, 1, 0, 0], dtype=bool)
    has_match = np.array([1, 1, 1, 1, 1, 1, 0, 1, 0, 0], dtype=bool)
    result = calibrate_for_precision(scores, correct, has_match, target_precision=0.8, min_recall=0.0)
    assert result.feasible and result.chosen is not None
    # Accepting down to 0.7 gives 5 correct of 6 answers (0.833 >= 0.8); down to 0.6: 6 of 8 = 0.75 < 0.8.
    assert 0.65 < result.chosen.threshold < 0.7
    precision, recall = _direct(result.chosen.threshold, scores, correct, has_match)
    assert (result.chosen.precision, result.chosen.recall) == pytest.approx((precision, recall))
    assert recall == pytest.approx(5 / 7)
    assert result.chosen.absent_false_match == 0.0
    assert operating_point_at(result.chosen.threshold, scores, correct, has_match) == result.chosen
    # Before calibration, at 0.5 everything is answered: all 3 absent people get a wrong match.
    loose = operating_point_at(0.5, scores, correct, has_match)
    assert (loose.answered, loose.recall, loose.precision) == (1.0, 6 / 7, 0.6)
    assert loose.absent_false_match == 1.0
    # Precision 1.0 is reached by the first four: recall 4/7, threshold between 0.8 and 0.75.
    strict = calibrate_for_precision(scores, correct, has_match, target_precision=1.0, min_recall=0.0)
    assert strict.chosen is not None and 0.75 < strict.chosen.threshold < 0.8
    assert strict.chosen.recall == pytest.approx(4 / 7)


def test_unreachable_target_says_so_instead_of_rejecting_everything() -> None:
    # Scores carry no signal and one answer in three is wrong: precision never reaches 0.9 at a useful recall.
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.3, 0.8, 400)
    has_match = rng.random(400) < 0.8
    correct = has_match & (rng.random(400) < 0.8)
    result = calibrate_for_precision(scores, correct, has_match, target_precision=0.9, min_recall=0.05)
    assert not result.feasible and result.chosen is None
    text = result.explain()
    assert "no threshold reaches precision 0.9" in text and "best reachable: precision" in text
    assert result.best_precision is not None and result.best_precision.precision < 0.9
    assert result.curve["0.5"] is not None  # what a lower target would give is listed
    assert "precision >= 0.5: threshold" in text


def _embeddings(feats: np.ndarray, pids: list[int]) -> Embeddings:
    feats = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    return Embeddings(feats, np.array(pids), np.zeros(len(pids)), np.array([""] * len(pids), dtype=object), [])


def test_collections_have_the_requested_shape_and_known_answers() -> None:
    # 60 people, orthogonal-ish random directions; the query of a person is their gallery crop plus small noise.
    rng = np.random.default_rng(1)
    base = rng.normal(size=(60, 32))
    gallery = _embeddings(np.repeat(base, 2, axis=0), [p for p in range(60) for _ in range(2)])
    query = _embeddings(base + 0.05 * rng.normal(size=base.shape), list(range(60)))
    shape = CollectionShape(gallery_size=20, absent_share=0.2, collections=10, seed=3)
    out = simulate_collections(query, gallery, shape)
    assert out.collections == 10 and out.mean_gallery_people == 20 and out.mean_gallery_crops == 40
    per_collection = 20 + 5  # 5 absent queries make 20 % of 25
    assert out.scores.shape == (10 * per_collection,)
    assert out.has_match.sum() == 10 * 20
    assert out.correct[out.has_match].all() and not out.correct[~out.has_match].any()
    # Absent people only find strangers: their best score is far below the registered people's.
    assert out.scores[~out.has_match].max() < out.scores[out.has_match].min()
    capped = simulate_collections(query, gallery, CollectionShape(20, 0.2, 2, crops_per_person=1))
    assert capped.mean_gallery_crops == 20


def test_soccernet_like_groups_keep_each_collection_inside_one_action() -> None:
    # Two actions reuse pids 0-9 for different people. Action "b"'s gallery copies action "a"'s queries exactly,
    # so a collection mixing the two actions would give action-a queries perfect (wrong) matches.
    rng = np.random.default_rng(2)
    a_people, b_people = rng.normal(size=(10, 16)), rng.normal(size=(10, 16))
    a_queries = a_people + 0.3 * rng.normal(size=a_people.shape)
    feats_g = np.concatenate([a_people, a_queries])  # b's gallery = a's queries
    feats_q = np.concatenate([a_queries, b_people])
    pids = list(range(10)) * 2
    groups = np.array(["a"] * 10 + ["b"] * 10, dtype=object)
    gallery = _embeddings(feats_g, pids)
    query = _embeddings(feats_q, pids)
    gallery.groups, query.groups = groups, groups.copy()
    out = simulate_collections(query, gallery, CollectionShape(gallery_size=8, absent_share=0.2, collections=2))
    assert out.collections == 2 and out.mean_gallery_people == 8
    a_rows = slice(0, 10)  # collection 0 is action "a": 8 registered + 2 absent queries
    assert out.scores[a_rows].max() < 0.9999  # never the identical crop from action "b"


def _write_people(root: Path, people: int, images: int) -> None:
    for person in range(people):
        folder = root / f"player-{person:02d}"
        folder.mkdir(parents=True)
        for variant in range(images):
            # The same crop twice: registered and asked copies embed identically (a perfect match).
            player_crop(person, variant // 2).save(folder / f"{variant}.png")


def test_folder_reader_splits_each_person(tmp_path: Path) -> None:
    _write_people(tmp_path, 3, 4)
    (tmp_path / "empty").mkdir()
    split = read_folder(tmp_path)
    assert len(split.gallery) == 6 and len(split.query) == 6 and split.train == []
    assert {s.raw_pid for s in split.gallery} == {"player-00", "player-01", "player-02"}
    assert all(s.camid == 0 for s in split.gallery) and all(s.camid == 1 for s in split.query)
    with pytest.raises(FileNotFoundError):
        read_folder(tmp_path / "empty")


def test_cli_writes_the_model_card_and_refuses_an_unreachable_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = make_tiny_checkpoint(tmp_path / "uncalibrated.safetensors", threshold=None)
    # A model card's provenance (initial weights, data terms) must survive calibration.
    from model import load_checkpoint, save_checkpoint

    provenance = {"initial_weights": [{"file": "w.pth", "sha256": "ab", "licence": "MIT"}], "training_data": {}}
    save_checkpoint(load_checkpoint(checkpoint)[0], checkpoint, provenance=provenance)
    # 1 image per person: folder gives it as a gallery crop only; 2 images: the same crop registered and asked.
    _write_people(tmp_path / "crops", 12, 2)
    out = tmp_path / "calibrated.safetensors"
    common = [
        str(checkpoint), "--data-format", "folder", "--data-root", str(tmp_path / "crops"), "--out", str(out),
        "--gallery-size", "6", "--absent-share", "0.25", "--collections", "8", "--device", "cpu",
    ]  # fmt: skip
    assert calibrate_main(common) == 0
    card = json.loads(capsys.readouterr().out)
    spec = read_checkpoint_spec(out)
    assert spec.threshold is not None and spec.threshold == card["threshold"]
    assert spec.calibration == card
    assert spec.provenance == provenance
    assert card["precision"] >= 0.9 and card["recall"] == 1.0  # identical copies always win top-1
    assert card["data"] == {"format": "folder", "name": "folder", "root": "crops", "people": 12,
                            "query_crops": 12, "gallery_crops": 12}  # fmt: skip
    assert card["collections"]["gallery_size"] == 6 and card["collections"]["absent_share"] == 0.25
    assert card["collections"]["queries"] == 8 * 8 and card["collections"]["absent_queries"] == 8 * 2
    assert card["target_precision"] == 0.9 and "precision of returned matches >= 0.9" in card["objective"]
    assert card["previous_threshold"] is None
    assert card["before"]["threshold"] == 0.5  # the service's default for a checkpoint without a threshold

    # Different people that look alike to a random network: a precision of 1.0 at recall >= 0.99 is out of reach
    # when crops are jittered variants; nothing is written and the reason is printed.
    _write_people_jittered(tmp_path / "hard", 12)
    refused = tmp_path / "refused.safetensors"
    hard = [*common[:3], "--data-root", str(tmp_path / "hard"), "--out", str(refused), *common[7:]]
    hard[hard.index("--out") + 1] = str(refused)
    code = calibrate_main([*hard, "--target-precision", "1.0", "--min-recall", "0.99"])
    err = capsys.readouterr().err
    assert code == EXIT_INFEASIBLE and not refused.exists()
    assert "no threshold reaches precision 1.0" in err and "nothing written" in err


def _write_people_jittered(root: Path, people: int) -> None:
    for person in range(people):
        folder = root / f"p{person:02d}"
        folder.mkdir(parents=True)
        for variant in (1, 2):
            player_crop(person % 3, variant + 10 * person).save(folder / f"{variant}.png")


def test_cli_refuses_a_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        calibrate_main(["nope.safetensors", "--data-format", "folder", "--data-root", str(tmp_path), "--out", "x"])
    assert exc.value.code == 2 and "no such file: nope.safetensors" in capsys.readouterr().err

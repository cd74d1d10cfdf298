"""Challenge ranking files: reid-eval writes them in the official SoccerNet format, refuses to score the hidden-label
split, and the file read back scores exactly what the evaluation reported on a labelled split."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model import build_model, save_checkpoint
from training.cli import eval_main
from training.data.readers import read_soccernet, read_soccernet_challenge
from training.data.synthetic import SyntheticConfig, generate_soccernet_tree
from training.evaluation.challenge import check_ranking, groundtruth, ranking_results, read_ranking, score_ranking
from training.evaluation.evaluate import evaluate_model

DATA = SyntheticConfig(train_games=0, valid_games=2, test_games=0, challenge_games=2, actions_per_game=2,
                       players_per_action=5, views=3, height=32, width=16, seed=3)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A SYNTHETIC tree with valid + challenge splits and an untrained checkpoint (rankings need no skill)."""
    work = tmp_path_factory.mktemp("challenge")
    generate_soccernet_tree(work / "soccernet", DATA)
    torch.manual_seed(0)
    checkpoint = work / "model.safetensors"
    save_checkpoint(build_model("osnet_x0_25", input_size=(32, 16)).eval(), checkpoint)
    return work / "soccernet", checkpoint


def test_challenge_export_writes_the_ranking_file_and_no_score(setup: tuple[Path, Path], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    root, checkpoint = setup
    out = tmp_path / "challenge"
    assert eval_main([str(checkpoint), "--data-root", str(root), "--eval-split", "challenge", "--out", str(out),
                      "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["score"] is None and "mAP" not in json.dumps(report) and "rank1" not in json.dumps(report)
    path = out / "ranking_results_challenge.json"
    assert report["ranking_file"] == str(path) and not (out / "metrics.json").exists()
    ranking = read_ranking(path)
    query, gallery = read_soccernet_challenge(root / "challenge")
    check_ranking(ranking, query, gallery)  # every query; every crop of its action exactly once
    assert len(ranking) == len(query) == report["queries"]
    raw = json.loads(path.read_text())
    assert all(isinstance(k, str) and all(type(v) is int for v in vs) for k, vs in raw.items())


def test_challenge_needs_an_output_folder(setup: tuple[Path, Path]) -> None:
    root, checkpoint = setup
    with pytest.raises(SystemExit):
        eval_main([str(checkpoint), "--data-root", str(root), "--eval-split", "challenge"])


def test_hidden_labels_are_never_scored(setup: tuple[Path, Path]) -> None:
    root, checkpoint = setup
    from model import load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    split = read_soccernet(root, eval_split="challenge", train_split=None)
    with pytest.raises(ValueError, match="labels are hidden"):
        evaluate_model(model, split, torch.device("cpu"))


def test_valid_ranking_file_round_trips_to_the_reported_score(setup: tuple[Path, Path], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """The exported file, read back and scored against the split's ground truth, gives the mAP and rank-1 that
    reid-eval printed: by our scorer and by SoccerNet's official one (the challenge server's)."""
    root, checkpoint = setup
    out = tmp_path / "valid"
    assert eval_main([str(checkpoint), "--data-root", str(root), "--eval-split", "valid", "--out", str(out),
                      "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    ranking = read_ranking(out / "ranking_results_valid.json")
    split = read_soccernet(root, eval_split="valid", train_split=None)
    check_ranking(ranking, split.query, split.gallery)
    scored = score_ranking(ranking, groundtruth(split.query, split.gallery))
    assert 0.0 < report["metrics"]["mAP"] < 1.0  # an untrained model: a score that can disagree
    assert scored["mAP"] == pytest.approx(report["metrics"]["mAP"], abs=1e-6)
    assert scored["rank1"] == pytest.approx(report["metrics"]["rank1"], abs=1e-6)
    assert scored["num_queries"] == len(split.query)

    # And the official SoccerNet scorer (the challenge server's code) on the same file agrees.
    official = pytest.importorskip(
        "SoccerNet.Evaluation.ReIdentification",
        reason="SoccerNet is not installed (pip install --no-deps SoccerNet==0.2.0; see pyproject's 'oracles')",
    )
    truth = tmp_path / "groundtruth_valid.json"
    truth.write_text(json.dumps(groundtruth(split.query, split.gallery)))
    with contextlib.redirect_stdout(io.StringIO()):
        theirs = official.evaluate(str(truth), str(out / "ranking_results_valid.json"))
    assert float(theirs["mAP"]) == pytest.approx(report["metrics"]["mAP"], abs=1e-6)
    assert float(theirs["rank-1"]) == pytest.approx(report["metrics"]["rank1"], abs=1e-6)


def _tiny_ranking(setup: tuple[Path, Path]) -> tuple[dict[str, list[int]], list, list]:
    root, _ = setup
    query, gallery = read_soccernet_challenge(root / "challenge")
    distmat = np.random.default_rng(0).random((len(query), len(gallery)))
    return ranking_results(query, gallery, distmat), query, gallery


@pytest.mark.parametrize("damage", ["drop_query", "repeat", "other_action", "missing_crop"])
def test_check_ranking_rejects_what_the_server_rejects(setup: tuple[Path, Path], damage: str) -> None:
    ranking, query, gallery = _tiny_ranking(setup)
    first = next(iter(ranking))
    if damage == "drop_query":
        del ranking[first]
    elif damage == "repeat":
        ranking[first] = [*ranking[first], ranking[first][0]]
    elif damage == "other_action":
        foreign = next(g for k, gs in ranking.items() for g in gs if g not in ranking[first])
        ranking[first] = [*ranking[first], foreign]
    else:
        ranking[first] = ranking[first][1:]
    with pytest.raises(ValueError):
        check_ranking(ranking, query, gallery)


def test_read_ranking_rejects_non_integer_entries(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"0": [1, "2"]}))
    with pytest.raises(ValueError, match="list of integers"):
        read_ranking(path)
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="one JSON object"):
        read_ranking(path)

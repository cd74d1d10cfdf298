"""CLIs end to end on a tiny synthetic run: demo model build, reid-eval, reid-export, reid-train argument errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model import CheckpointError, load_checkpoint, read_checkpoint_spec
from training.cli import build_demo_model, eval_main, export_main, train_main
from training.data.readers import read_soccernet
from training.evaluation.evaluate import evaluate_model
from training.evaluation.metrics import evaluate_soccernet
from training.evaluation.reranking import rerank_per_group

TINY_SYNTHETIC = {"train_games": 3, "valid_games": 1, "players_per_action": 4, "views": 3, "height": 32,
                  "width": 16}


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, Path]:
    """A demo checkpoint from 2 x 2 training steps on a tiny SYNTHETIC set (shape of the pipeline, not quality)."""
    work = tmp_path_factory.mktemp("demo")
    out = work / "demo.safetensors"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # steadier than 2 threads when the 2 cores are shared (see test_loop.one_thread)
    try:
        info = build_demo_model(out, work / "work", epochs=2, steps_per_epoch=2, progress=False,
                                synthetic_overrides=TINY_SYNTHETIC, input_size=(32, 16))
    finally:
        torch.set_num_threads(threads)
    return out, info, work / "work"


def test_demo_checkpoint_is_a_serving_checkpoint(tiny_demo: tuple[Path, dict, Path]) -> None:
    out, info, work = tiny_demo
    model, spec = load_checkpoint(out)
    assert spec.architecture == "osnet_x0_25"
    assert model.num_classes == 0 and model.classifier is None
    assert spec.model_config["num_classes"] == 0
    assert not any(k.startswith("classifier.") for k in model.state_dict())
    assert spec.threshold is not None and spec.threshold == info["threshold"]
    assert spec.preprocess.height == 32 and spec.preprocess.width == 16
    assert spec.train_meta["demo"] is True and "SYNTHETIC" in spec.train_meta["data"]
    assert "mAP" in spec.metrics and "calibration" in spec.metrics
    assert info["seconds"] > 0
    emb = model.embed(torch.rand(2, 3, 32, 16))
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))
    # The training run kept its own folder: resolved config, metrics, plots.
    assert (work / "run" / "config.yaml").is_file() and (work / "run" / "plots" / "loss.png").is_file()


def test_demo_data_is_labelled_synthetic(tiny_demo: tuple[Path, dict, Path]) -> None:
    _, _, work = tiny_demo
    summary = json.loads((work / "synthetic" / "synthetic_summary.json").read_text())
    assert summary["config"]["players_per_action"] == 4 and summary["synthetic"] is True
    assert (work / "synthetic" / "train" / "SYNTHETIC.txt").is_file()


def test_reid_eval_writes_metrics_and_plots(tiny_demo: tuple[Path, dict, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out, _, work = tiny_demo
    eval_dir = tmp_path / "eval"
    code = eval_main([str(out), "--data-format", "soccernet", "--data-root", str(work / "synthetic"),
                      "--device", "cpu", "--out", str(eval_dir), "--rerank"])
    assert code == 0
    report = json.loads((eval_dir / "metrics.json").read_text())
    assert report == json.loads(capsys.readouterr().out)
    # The printed figures are the library's on the same embeddings: plain ranking, then re-ranked per action.
    model, _ = load_checkpoint(out)
    split = read_soccernet(work / "synthetic", eval_split="valid", train_split=None)
    result = evaluate_model(model, split, torch.device("cpu"))
    q, g = result.query, result.gallery
    expected_rr = evaluate_soccernet(rerank_per_group(q.feats, g.feats, q.groups, g.groups), q.pids, g.pids,
                                     q.groups, g.groups)
    assert report["metrics"]["num_queries"] == len(split.query) > 0
    assert report["metrics"]["mAP"] == pytest.approx(result.metrics["mAP"], abs=1e-6)
    assert report["metrics_reranked"]["mAP"] == pytest.approx(expected_rr["mAP"], abs=1e-6)
    assert report["metrics_reranked"]["rank1"] == pytest.approx(expected_rr["rank1"], abs=1e-6)
    assert report["checkpoint_threshold"] == read_checkpoint_spec(out).threshold
    assert report["data"] == "soccernet/valid"
    for name in ("cmc.png", "ranked.png"):
        assert (eval_dir / "plots" / name).read_bytes()[:4] == b"\x89PNG"


def test_reid_export_from_run_folder(tiny_demo: tuple[Path, dict, Path], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    _, _, work = tiny_demo
    dst = tmp_path / "exported.safetensors"
    assert export_main([str(work / "run"), "--out", str(dst)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["source"].endswith("best.safetensors")
    trained_spec = read_checkpoint_spec(work / "run" / "best.safetensors")
    assert trained_spec.model_config["num_classes"] > 0  # the run's checkpoint still has its classifier
    model, spec = load_checkpoint(dst)
    assert model.num_classes == 0 and spec.threshold == trained_spec.threshold
    assert spec.train_meta["exported_from"] == "best.safetensors"
    # Same embedding as the trained model: export only drops the classifier.
    trained, _ = load_checkpoint(work / "run" / "best.safetensors")
    x = torch.rand(3, 3, 32, 16)
    torch.testing.assert_close(model.embed(x), trained.eval().embed(x))


def test_reid_export_of_an_empty_folder_fails(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"best\.safetensors"):
        export_main([str(tmp_path), "--out", str(tmp_path / "x.safetensors")])


def test_reid_train_rejects_unknown_key_with_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        train_main(["optim.lrr=0.1"])
    assert info.value.code == 2
    assert "lrr" in capsys.readouterr().err


def test_reid_export_onnx_writes_the_graph_the_service_serves(tiny_checkpoint: Path) -> None:
    """The session's cached graph (tests/conftest.py) is written by `reid-export --format onnx`: check that file."""
    import os

    import numpy as np
    import onnxruntime as ort

    from model.checkpoint import file_sha256
    from model.export import FINGERPRINT_KEY, INPUT_NAME, read_onnx_metadata, spec_from_metadata
    from service.inference.embedder import Embedder
    from service.inference.runtime import cached_graph_path

    graph = cached_graph_path(Path(os.environ["REID_ONNX_CACHE_DIR"]), file_sha256(tiny_checkpoint))
    metadata = read_onnx_metadata(graph)
    assert spec_from_metadata(metadata) == read_checkpoint_spec(tiny_checkpoint)
    assert metadata[FINGERPRINT_KEY] == file_sha256(tiny_checkpoint)
    crops = np.random.default_rng(0).integers(0, 256, size=(3, 3, 64, 32), dtype=np.uint8)
    (got,) = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"]).run(None, {INPUT_NAME: crops})
    expected = Embedder.from_checkpoint(tiny_checkpoint, "cpu", "torch").embed_batch(crops)
    assert np.min(np.sum(got * expected, axis=1)) >= 0.9999


def test_reid_export_onnx_of_a_missing_checkpoint_fails(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        export_main([str(tmp_path / "absent.safetensors"), "--format", "onnx", "--out", str(tmp_path / "x.onnx")])
    assert not (tmp_path / "x.onnx").exists()

"""Command-line entry points of the training package (declared in pyproject's [project.scripts]).

    reid-train --config train.yaml data.root=/data/soccernet-reid model.name=pose_bilinear run.out_dir=runs/pb
    reid-eval runs/pb/best.safetensors --data-format soccernet --data-root /data/soccernet-reid --out runs/pb/eval
    reid-eval runs/pb/best.safetensors --data-root /data/soccernet-reid --eval-split challenge --out runs/pb/challenge
    reid-export runs/pb --out models/pose_bilinear.safetensors
    reid-export models/pose_bilinear.safetensors --format onnx --out models/pose_bilinear.onnx
    reid-demo-model --out artifacts/demo.safetensors        # SYNTHETIC players, CPU, a few minutes
    reid-synthetic --out data/synthetic --games 8
    reid-fetch --list                                      # the pretrained model zoo (training/zoo/registry.py)
    reid-fetch osnet_x1_0_msmt17 --out artifacts/osnet_x1_0_msmt17.safetensors
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from model import build_model, load_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def train_main(argv: list[str] | None = None) -> int:
    """reid-train [--config FILE] [dotted.key=value ...]"""
    from training.config import ConfigError, load_config
    from training.train.loop import train

    parser = argparse.ArgumentParser(prog="reid-train", description="Train a re-id model (see training/config.py).")
    parser.add_argument("--config", type=Path, help="YAML config; defaults are used for missing keys")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=0.0005 run.amp=false")
    args = parser.parse_args(argv)
    _setup_logging()
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as exc:
        parser.error(str(exc))
    try:
        result = train(config)
    except (ValueError, FileNotFoundError) as exc:
        logger.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if result.out_dir is not None and not _is_main_rank():
        return 0
    print(json.dumps({"out_dir": str(result.out_dir), "best_checkpoint": str(result.best_checkpoint),
                      "best_metrics": result.best_metrics, "test_metrics": result.test_metrics}, indent=2))
    return 0


def _is_main_rank() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def _read_eval_split(fmt: str, root: str, eval_split: str, cuhk03_eval_pids: tuple[int, int]) -> Any:
    from training.data.readers import read_cuhk03, read_market1501, read_soccernet

    if fmt == "soccernet":
        return read_soccernet(root, eval_split=eval_split, train_split=None)
    if fmt == "market1501":
        return read_market1501(root)
    if fmt == "cuhk03":
        return read_cuhk03(root, train_pids=None, eval_pids=cuhk03_eval_pids)
    raise ValueError(f"unknown data format {fmt!r}; valid: soccernet, market1501, cuhk03")


def _add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-format", default="soccernet", choices=["soccernet", "market1501", "cuhk03"])
    parser.add_argument("--data-root", required=True, help="data set root (CUHK03: the folder of <pid>_<idx>.jpg)")
    parser.add_argument("--eval-split", default="valid", choices=["valid", "test", "challenge"],
                        help="SoccerNet split: valid | test (scored) | challenge (ranking file only, no score)")
    parser.add_argument("--cuhk03-eval-pids", type=int, nargs=2, default=(1000, 1467), metavar=("LOW", "HIGH"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=128)


def _challenge_main(args: argparse.Namespace, model: Any, device: torch.device) -> int:
    """Rank the hidden-label challenge split and write the official ranking file; never print a score."""
    from training.evaluation.challenge import check_ranking, ranking_filename, ranking_results, write_ranking
    from training.evaluation.evaluate import extract_embeddings
    from training.evaluation.metrics import compute_distance_matrix

    split = _read_eval_split("soccernet", args.data_root, "challenge", tuple(args.cuhk03_eval_pids))
    query = extract_embeddings(model, split.query, device, args.batch_size, progress=True)
    gallery = extract_embeddings(model, split.gallery, device, args.batch_size, progress=True)
    if args.rerank:
        from training.evaluation.reranking import rerank_per_group

        distmat = rerank_per_group(query.feats, gallery.feats, query.groups, gallery.groups)
    else:
        distmat = compute_distance_matrix(query.feats, gallery.feats, metric="cosine")
    ranking = ranking_results(split.query, split.gallery, distmat)
    check_ranking(ranking, split.query, split.gallery)
    path = write_ranking(ranking, args.out / ranking_filename("challenge"))
    print(json.dumps({"checkpoint": str(args.checkpoint), "data": split.name, "ranking_file": str(path),
                      "queries": len(split.query), "gallery": len(split.gallery), "reranked": args.rerank,
                      "score": None,
                      "note": "challenge labels are hidden: the score comes from the challenge server only"},
                     indent=2))
    return 0


def eval_main(argv: list[str] | None = None) -> int:
    """reid-eval CHECKPOINT --data-format F --data-root R [--out DIR] [--rerank]: metrics JSON and plots.

    SoccerNet with --out also writes the split's ranking file in the challenge format; ``--eval-split challenge``
    writes only that file (labels are hidden there, so no score is printed).
    """
    from model.device import resolve_device
    from training.evaluation.evaluate import evaluate_model, protocol_for
    from training.train.loop import write_plots

    parser = argparse.ArgumentParser(prog="reid-eval", description="Evaluate a checkpoint on a data set.")
    parser.add_argument("checkpoint", type=Path)
    _add_data_args(parser)
    parser.add_argument("--out", type=Path, help="folder for metrics.json, plots and (SoccerNet) the ranking file")
    parser.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (per action for SoccerNet)")
    args = parser.parse_args(argv)
    if args.eval_split == "challenge" and (args.data_format != "soccernet" or args.out is None):
        parser.error("--eval-split challenge is SoccerNet's hidden-label split: it needs --data-format soccernet "
                     "and --out DIR for the ranking file (no score is computed)")
    _setup_logging()
    device = resolve_device(args.device)
    model, spec = load_checkpoint(args.checkpoint, device)
    if args.eval_split == "challenge":
        return _challenge_main(args, model, device)
    split = _read_eval_split(args.data_format, args.data_root, args.eval_split, tuple(args.cuhk03_eval_pids))
    result = evaluate_model(model, split, device, args.batch_size, progress=True)
    report: dict[str, Any] = {
        "checkpoint": str(args.checkpoint),
        "architecture": spec.architecture,
        "data": split.name,
        "metrics": {k: v for k, v in result.metrics.items() if k != "cmc"},
        "calibration": result.calibration.as_dict(),
        "checkpoint_threshold": spec.threshold,
    }
    distmat = result.distmat
    if args.rerank:
        from training.evaluation.metrics import evaluate_market, evaluate_soccernet
        from training.evaluation.reranking import rerank_per_group

        q, g = result.query, result.gallery
        if protocol_for(split) == "soccernet":
            distmat = rerank_per_group(q.feats, g.feats, q.groups, g.groups)
            rr = evaluate_soccernet(distmat, q.pids, g.pids, q.groups, g.groups)
        else:
            reranked = rerank_per_group(q.feats, g.feats, [0] * len(q.pids), [0] * len(g.pids))
            rr = evaluate_market(reranked, q.pids, g.pids, q.camids, g.camids)
        # Re-ranked distances are not cosine scores, so the calibrated threshold is left as it was.
        report["metrics_reranked"] = {k: v for k, v in rr.items() if k != "cmc"}
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        if args.data_format == "soccernet":
            from training.evaluation.challenge import ranking_filename, ranking_results, write_ranking

            ranking = ranking_results(split.query, split.gallery, distmat)
            report["ranking_file"] = str(write_ranking(ranking, args.out / ranking_filename(args.eval_split)))
        (args.out / "metrics.json").write_text(json.dumps(report, indent=2))
        write_plots(args.out, [], result)
    print(json.dumps(report, indent=2))
    return 0


def export_for_serving(source: Path, out: Path, extra_meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write a serving checkpoint: the source's weights without the training-only classifier, its threshold
    and metrics. ``source`` is a checkpoint or a run folder (its best.safetensors, else last.safetensors)."""
    source = _resolve_source(source)
    trained, spec = load_checkpoint(source)
    config = {**spec.model_config, "num_classes": 0}
    model = build_model(spec.architecture, **config)
    state = {k: v for k, v in trained.state_dict().items() if not k.startswith("classifier.")}
    model.load_state_dict(state, strict=True)
    meta = {**spec.train_meta, "exported_from": source.name, **(extra_meta or {})}
    # The model card travels with the weights: where they came from and how the threshold was calibrated.
    save_checkpoint(
        model.eval(), out, threshold=spec.threshold, metrics=spec.metrics, train_meta=meta, thresholds=spec.thresholds,
        provenance=spec.provenance, calibration=spec.calibration,
    )
    return {"source": str(source), "out": str(out), "threshold": spec.threshold, "metrics": spec.metrics}


def export_onnx_graph(source: Path, out: Path | None = None, graph_only: bool = False) -> dict[str, Any]:
    """Write a checkpoint's ONNX graph (the model card and the checkpoint's sha256 in its metadata) and, beside
    it, the checkpoint it belongs to, so the pair travels together and serves without torch.

    ``source`` is a checkpoint or a run folder (its best/last checkpoint, exported for serving first, as the
    safetensors format does). ``out`` (default: the checkpoint's own name with .onnx) names the graph; the
    checkpoint goes beside it under the same name with .safetensors, copied byte for byte (same fingerprint)
    unless it is already there. ``graph_only`` writes the graph alone (e.g. into a cache keyed by fingerprint).
    """
    import shutil

    from model.checkpoint import file_sha256
    from model.export import export_onnx
    from model.graph import checkpoint_beside, graph_beside
    from model.spec import CheckpointError

    run_folder = source.is_dir()
    resolved = _resolve_source(source)
    if out is None:
        if run_folder:
            raise ValueError(f"{source} is a run folder: name the graph with --out NAME.onnx")
        out = graph_beside(resolved)
    if out.suffix != ".onnx":
        raise ValueError(f"--out {out}: an ONNX graph's name ends in .onnx")
    checkpoint = resolved
    if not graph_only:
        paired = checkpoint_beside(out)
        if run_folder:
            export_for_serving(resolved, paired)
            checkpoint = paired
        elif not paired.exists() or paired.resolve() != resolved.resolve():
            if not resolved.is_file():
                raise CheckpointError(f"checkpoint not found: {resolved}")
            paired.parent.mkdir(parents=True, exist_ok=True)
            tmp = paired.with_name(paired.name + ".tmp")
            shutil.copyfile(resolved, tmp)
            tmp.replace(paired)
            checkpoint = paired
    model, spec = load_checkpoint(checkpoint)
    fingerprint = file_sha256(checkpoint)
    export_onnx(model, spec, out, fingerprint=fingerprint)
    return {
        "source": str(source),
        "graph": str(out),
        "checkpoint": None if graph_only else str(checkpoint),
        "sha256": fingerprint,
        "architecture": spec.architecture,
        "format": "onnx",
    }


def _resolve_source(source: Path) -> Path:
    if source.is_dir():
        candidates = [source / "best.safetensors", source / "last.safetensors"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise FileNotFoundError(f"{source} holds neither best.safetensors nor last.safetensors")
        return found
    return source


def export_main(argv: list[str] | None = None) -> int:
    """reid-export RUN_DIR_OR_CHECKPOINT --out DST [--format safetensors|onnx]

    reid-export checkpoints/mine.safetensors --format onnx      # writes checkpoints/mine.onnx beside it
    reid-export runs/x --format onnx --out models/x.onnx        # models/x.safetensors + models/x.onnx
    """
    parser = argparse.ArgumentParser(
        prog="reid-export",
        description="Make a serving checkpoint from a run, or the ONNX graph that serves a checkpoint without torch.",
    )
    parser.add_argument("source", type=Path, help="run folder or checkpoint")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="safetensors: the serving checkpoint (required). onnx: the graph, NAME.onnx (default: beside the "
        "checkpoint); the checkpoint is written beside it as NAME.safetensors, so the two travel together",
    )
    parser.add_argument(
        "--format",
        choices=["safetensors", "onnx"],
        default="safetensors",
        help="safetensors: serving checkpoint (classifier dropped); onnx: uint8 crops -> unit embeddings graph, "
        "model card and the checkpoint's sha256 in its metadata, checked against torch",
    )
    parser.add_argument(
        "--graph-only", action="store_true", help="onnx: write the graph alone, not the checkpoint beside it"
    )
    args = parser.parse_args(argv)
    _setup_logging()
    if args.format == "onnx":
        print(json.dumps(export_onnx_graph(args.source, args.out, args.graph_only), indent=2))
    else:
        if args.out is None:
            parser.error("--out is required with --format safetensors")
        print(json.dumps(export_for_serving(args.source, args.out), indent=2))
    return 0


# SYNTHETIC players for the demo checkpoint. One action per game, so every training label is a different
# person (several actions of one game would give one player several labels); six views per person give the
# P x K sampler four distinct crops most of the time. Crops are drawn at 128x64 (what users send to the
# demo server looks like them) and the model reads them at 64x32, which keeps CPU training within minutes.
DEMO_SYNTHETIC: dict[str, Any] = {
    "train_games": 40, "valid_games": 4, "test_games": 0, "actions_per_game": 1, "players_per_action": 8,
    "views": 6, "height": 128, "width": 64, "occlusion_p": 0.1, "low_res_p": 0.2,
}
DEMO_INPUT_SIZE = (64, 32)
DEMO_EPOCHS = 24
DEMO_STEPS_PER_EPOCH = 50


def _synthetic_data(data_dir: Path, synthetic: Any) -> None:
    """Generate the demo's synthetic tree unless ``data_dir`` already holds one made with the same config."""
    import shutil
    from dataclasses import asdict

    from training.data.synthetic import generate_soccernet_tree

    summary = data_dir / "synthetic_summary.json"
    if summary.is_file() and json.loads(summary.read_text()).get("config") == asdict(synthetic):
        logger.info("reusing SYNTHETIC players in %s", data_dir)
        return
    if data_dir.exists():
        shutil.rmtree(data_dir)  # made with other settings: mixing the two would corrupt both splits
    started = time.perf_counter()
    info = generate_soccernet_tree(data_dir, synthetic)
    logger.info("generated %s SYNTHETIC crops in %.1f s under %s", info["images"], time.perf_counter() - started,
                data_dir)


def build_demo_model(out: Path, work_dir: Path, epochs: int = DEMO_EPOCHS, seed: int = 0, progress: bool = True,
                     synthetic_overrides: dict[str, Any] | None = None,
                     steps_per_epoch: int = DEMO_STEPS_PER_EPOCH,
                     input_size: tuple[int, int] = DEMO_INPUT_SIZE) -> dict[str, Any]:
    """Generate SYNTHETIC players, train OSNet-x0.25 on them on the CPU, export a serving checkpoint.

    Returns the export summary (threshold, valid metrics) plus "seconds" (wall time, data generation included).
    """
    from training.config import load_config
    from training.data.synthetic import SyntheticConfig
    from training.train.loop import train

    started = time.perf_counter()
    synthetic = SyntheticConfig(**{**DEMO_SYNTHETIC, **(synthetic_overrides or {}), "seed": seed})
    _synthetic_data(work_dir / "synthetic", synthetic)
    height, width = input_size
    players = synthetic.players_per_action
    overrides = [
        "data.format=soccernet", f"data.root={work_dir / 'synthetic'}", f"data.height={height}",
        f"data.width={width}", "data.workers=0", f"data.pad={max(1, width // 10)}", "data.erase_p=0",
        "model.name=osnet_x0_25", 'model.options={"neck": "bnneck"}',
        "optim.lr=0.003", f"optim.epochs={epochs}", f"optim.steps_per_epoch={steps_per_epoch}",
        f"optim.warmup_steps={min(20, max(1, epochs * steps_per_epoch // 10))}", "optim.weight_decay=0.0005",
        f"sampler.identities_per_batch={min(8, players)}", "sampler.instances_per_identity=4",
        f"run.out_dir={work_dir / 'run'}", f"run.seed={seed}", "run.device=cpu", "run.resume=false",
        f"run.eval_every_epochs={max(1, epochs // 4)}", "run.log_every=10", f"run.progress={json.dumps(progress)}",
        "run.channels_last=false",
    ]
    result = train(load_config(None, overrides))
    if result.best_checkpoint is None:
        raise RuntimeError("demo training produced no checkpoint")
    info = export_for_serving(result.best_checkpoint, out, {"demo": True, "data": "SYNTHETIC players",
                                                            "note": "trained on SYNTHETIC players, for trying "
                                                                    "the API only; not for real footage"})
    info["seconds"] = round(time.perf_counter() - started, 1)
    return info


def demo_model_main(argv: list[str] | None = None) -> int:
    """reid-demo-model --out artifacts/demo.safetensors: a small checkpoint trained on SYNTHETIC players."""
    parser = argparse.ArgumentParser(prog="reid-demo-model",
                                     description="Build the demo checkpoint from SYNTHETIC players on the CPU.")
    parser.add_argument("--out", type=Path, default=Path("artifacts/demo.safetensors"))
    parser.add_argument("--work-dir", type=Path, default=None, help="default: <out's folder>/demo-run")
    parser.add_argument("--epochs", type=int, default=DEMO_EPOCHS)
    parser.add_argument("--steps-per-epoch", type=int, default=DEMO_STEPS_PER_EPOCH)
    parser.add_argument("--seed", type=int, default=0)
    # 64x32 crops in batches of 32 are too small to split across threads: on a shared 2-core machine one thread
    # ran at ~7 steps/s where two ran at ~1 step/s (OpenMP threads spinning against other processes).
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = parser.parse_args(argv)
    _setup_logging()
    torch.set_num_threads(max(1, args.threads))
    work_dir = args.work_dir or args.out.parent / "demo-run"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    info = build_demo_model(args.out, work_dir, epochs=args.epochs, seed=args.seed,
                            steps_per_epoch=args.steps_per_epoch)
    print(json.dumps(info, indent=2))
    print(f"demo checkpoint (trained on SYNTHETIC players, for trying the API only): {args.out}", file=sys.stderr)
    return 0


def _zoo_table() -> str:
    """The registry as a fixed-width table: name, architecture, data, pinned hash, published and measured rank-1."""
    from training.zoo.registry import MEASURED_PROTOCOL, ZOO

    rows = [("name", "arch", "training data", "sha256", "published R1", "CUHK03 R1 here (100 / all)")]
    for entry in ZOO.values():
        published = f"{entry.published['rank1']:.3f} ({entry.published['dataset'].split()[0]})"
        measured = "not measured"
        if entry.measured:
            measured = f"{entry.measured['cuhk03_rank1_100']:.3f} / {entry.measured['cuhk03_rank1_all']:.3f}"
        pinned = "pinned" if entry.sha256 else "not pinned"
        rows.append((entry.name, entry.architecture, entry.training_data.split(" (")[0], pinned, published, measured))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    notes = [
        "",
        "Weights: torchreid model zoo (MIT). Data: Market-1501 and MSMT17 are research-use-only data sets.",
        f"CUHK03 R1 here: {MEASURED_PROTOCOL} (benchmarks/zoo_cuhk03.py).",
        "Fetch one: reid-fetch NAME [--out FILE]; serve it: make serve MODEL=NAME",
    ]
    return "\n".join(lines + notes)


def fetch_main(argv: list[str] | None = None) -> int:
    """reid-fetch NAME [--out FILE] | reid-fetch --list: a pretrained model of the zoo as a serving checkpoint."""
    from training.zoo.fetch import CACHE_ENV, MIRROR_ENV, FetchError, cache_dir, fetch_model
    from training.zoo.registry import ZOO

    parser = argparse.ArgumentParser(
        prog="reid-fetch",
        description="Download public re-id weights (resumable, hash-checked), convert them strictly and write a "
        f"checkpoint whose model card records where they came from. Cache: ${CACHE_ENV} "
        f"(default {cache_dir()}); ${MIRROR_ENV}=<base URL> downloads from a mirror instead.",
    )
    parser.add_argument("name", nargs="?", help="model name (see --list)")
    parser.add_argument("--list", action="store_true", help="print the registry and exit")
    parser.add_argument("--out", type=Path, help="checkpoint to write (default: in the cache); printed at the end")
    parser.add_argument("--force", action="store_true", help="download and convert again even if cached")
    parser.add_argument("--retries", type=int, default=4, help="further attempts after a failed one (default 4)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to connect and per read (default 30)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.list:
        print(_zoo_table())
        return 0
    if not args.name:
        parser.error("give a model name, or --list to see them")
    if args.name not in ZOO:
        parser.error(f"unknown model {args.name!r}; known: {', '.join(ZOO)}")
    _setup_logging()
    try:
        result = fetch_model(
            args.name, args.out, force=args.force, retries=max(0, args.retries), timeout_s=args.timeout,
            progress=not args.quiet,
        )
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: what was downloaded is kept; run the same command again to resume", file=sys.stderr)
        return 130
    card = result.provenance
    state = "downloaded" if result.downloaded else "already fetched"
    print(
        f"{args.name} ({state}): {card['training_data']}; weights {card['weights_licence']}; "
        f"data: {card['data_terms']}",
        file=sys.stderr,
    )
    print(f"serve it: make serve CHECKPOINT={result.checkpoint}", file=sys.stderr)
    print(result.checkpoint)
    return 0


COMMANDS = {
    "train": train_main,
    "eval": eval_main,
    "export": export_main,
    "demo-model": demo_model_main,
    "fetch": fetch_main,
}


def main(argv: list[str] | None = None) -> int:
    """python -m training.cli {train,eval,export,demo-model,fetch} ARGS: what torchrun launches
    (``torchrun --nproc_per_node 4 -m training.cli train --config training/configs/soccernet.yaml``)."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in COMMANDS:
        print(f"usage: python -m training.cli {{{','.join(COMMANDS)}}} ARGS", file=sys.stderr)
        return 2
    return COMMANDS[args[0]](args[1:])


if __name__ == "__main__":
    raise SystemExit(main())

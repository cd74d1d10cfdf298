"""The method's comparison on real people: appearance only vs pose-bilinear vs pose-bilinear + layer-wise heads.

Each variant is one config in training/configs/ (pose_ablation_{a_osnet,b_pose,c_pose_layers}.yaml), trained by
the project's own loop with the same data, steps, seed and batch; this script runs them one after the other and
scores the last checkpoint of each (nothing is selected on a test set):

- within domain: the 75 Market-1501-half people that ``training.data.market_half`` holds out (Market protocol:
  one query per person and camera, the same person's other crops as gallery, same-camera matches removed);
- across domains: CUHK03 people 1000-1466, the people reid-calibrate uses: crop <pid>_05 (camera B) queries a
  gallery of crop <pid>_00 (camera A) of each of them (one crop per camera, to fit a loaded 2-core machine).

mAP and rank-1 come with 95% bootstrap intervals over query identities, and each pose variant's difference to
(a) with a paired interval (same identities resampled for both). Data comes from ../shared/data, extracted into a
work folder outside the repository.

    .venv/bin/python -m benchmarks.pose_ablation --out benchmarks/results/pose_ablation.json
    .venv/bin/python -m benchmarks.pose_ablation --quick --out /tmp/ablation.json     # 2 steps each: a smoke run
"""

from __future__ import annotations

import logging
import multiprocessing
import tarfile
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import (
    REPO_ROOT,
    SHARED_DATA,
    base_parser,
    ensure_repo_on_path,
    machine_info,
    markdown_table,
    setup_logging,
    write_results,
)

ensure_repo_on_path()

from model import build_model, load_checkpoint, save_checkpoint  # noqa: E402
from training.config import load_config  # noqa: E402
from training.data.market_half import SOURCE_FILE, prepare_market_half  # noqa: E402
from training.data.readers import read_cuhk03, read_market1501  # noqa: E402
from training.evaluation.bootstrap import bootstrap_interval, market_per_query, paired_difference  # noqa: E402
from training.evaluation.evaluate import extract_embeddings  # noqa: E402
from training.evaluation.metrics import compute_distance_matrix  # noqa: E402
from training.train.loop import train  # noqa: E402

logger = logging.getLogger(__name__)

CONFIGS = REPO_ROOT / "training" / "configs"
VARIANTS: dict[str, tuple[str, str]] = {
    # Not trained here: where (a) starts from, scored the same way (for what the fine-tuning changed).
    "0": ("", "(0) OSNet-x0.25 MSMT17 weights as published, not fine-tuned"),
    "a": ("pose_ablation_a_osnet.yaml", "(a) appearance only: OSNet-x0.25 (MSMT17 init)"),
    "b": ("pose_ablation_b_pose.yaml", "(b) pose-bilinear: OSNet-x0.25 + EfficientPose-RT part maps"),
    "c": ("pose_ablation_c_pose_layers.yaml", "(c) = (b) + layer-wise heads (conv2, conv3, conv4)"),
}
CUHK03_EVAL_PIDS = (1000, 1467)
RESAMPLES = 2000


def prepare_data(work: Path) -> tuple[Path, Path, Path]:
    """Market half (identity split) and CUHK03 extracted under ``work``.

    Returns (market root, its training view, CUHK03 images). The training view holds the same training folder
    and empty test folders, so the loop does not score the test people itself (this script does, once).
    """
    market = work / "market_half"
    prepare_market_half(SHARED_DATA / "market1501_half_train.tar", market)
    view = work / "market_half_train_only"
    if not view.is_dir():
        view.mkdir()
        (view / "bounding_box_train").symlink_to(market / "bounding_box_train")
        (view / "query").mkdir()
        (view / "bounding_box_test").mkdir()
        (view / SOURCE_FILE).write_text((market / SOURCE_FILE).read_text())
    cuhk03 = work / "cuhk03"
    images = cuhk03 / "dataset" / "images" / "full"
    if not images.is_dir():
        with tarfile.open(SHARED_DATA / "cuhk03_64x128.tar") as archive:
            archive.extractall(cuhk03, filter="data")
    return market, view, images


def score_split(model: Any, query: list[Any], gallery: list[Any], batch: int) -> dict[str, Any]:
    """Per-query AP / rank-1 (Market protocol) and their means with identity-bootstrap intervals."""
    device = torch.device("cpu")
    q = extract_embeddings(model, query, device, batch_size=batch, amp=False)
    g = extract_embeddings(model, gallery, device, batch_size=batch, amp=False)
    distmat = compute_distance_matrix(q.feats, g.feats, metric="cosine")
    ap, rank1, kept = market_per_query(distmat, q.pids, g.pids, q.camids, g.camids)
    ids = q.pids[kept]
    return {
        "mAP": float(ap.mean()),
        "mAP_ci95": bootstrap_interval(ap, ids, RESAMPLES),
        "rank1": float(rank1.mean()),
        "rank1_ci95": bootstrap_interval(rank1, ids, RESAMPLES),
        "num_queries": int(ap.size),
        "num_identities": len(np.unique(ids)),
        "_per_query": {"ap": ap, "rank1": rank1, "ids": ids},
    }


def run_variant(key: str, market: Path, out_root: Path, overrides: list[str]) -> dict[str, Any]:
    """Train variant ``key`` with its config (+ overrides) and return what the run says about itself."""
    config_name, _ = VARIANTS[key]
    if not config_name:
        base = load_config(CONFIGS / VARIANTS["a"][0], [f"data.root={market}"])
        model = build_model("osnet_x0_25", num_classes=0, input_size=(base.data.height, base.data.width),
                            **base.model.options)
        path = out_root / key / "untrained.safetensors"
        save_checkpoint(model, path)
        return {"checkpoint": path, "train_seconds": 0.0, "steps": 0, "batch": 0, "seed": base.run.seed,
                "config": "-", "command": "benchmarks/pose_ablation.py --variants 0"}
    args = [f"data.root={market}", f"run.out_dir={out_root / key}", "run.resume=false", *overrides]
    config = load_config(CONFIGS / config_name, args)
    started = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - started
    if result.last_checkpoint is None:
        raise RuntimeError(f"variant {key}: training wrote no checkpoint")
    steps = (config.optim.steps_per_epoch or 0) * config.optim.epochs
    return {"checkpoint": result.last_checkpoint, "train_seconds": seconds, "steps": steps,
            "batch": config.sampler.identities_per_batch * config.sampler.instances_per_identity,
            "seed": config.run.seed, "config": f"training/configs/{config_name}",
            "command": f"reid-train --config training/configs/{config_name} data.root=<market_half>"}


def _variant_job(job: tuple[Any, ...]) -> dict[str, Any]:
    """Train one variant and score its last checkpoint within domain and on CUHK03 (runs in a worker process)."""
    key, market, train_view, runs, overrides, cuhk03_query, cuhk03_gallery, batch, threads = job
    setup_logging("INFO")
    # One thread per process: on a loaded 2-core machine two OpenMP threads wait on each other (measured 10x
    # slower per step than one).
    torch.set_num_threads(threads)
    run = run_variant(key, train_view, runs, overrides)
    model, spec = load_checkpoint(run["checkpoint"])
    market_split = read_market1501(market)
    started = time.perf_counter()
    within = score_split(model, market_split.query, market_split.gallery, batch)
    across = score_split(model, cuhk03_query, cuhk03_gallery, batch)
    logger.info("%s: Market-half test mAP %.3f rank-1 %.3f | CUHK03 mAP %.3f rank-1 %.3f", key,
                within["mAP"], within["rank1"], across["mAP"], across["rank1"])
    return {
        "name": VARIANTS[key][1],
        **{k: v for k, v in run.items() if k != "checkpoint"},
        "checkpoint": str(run["checkpoint"]),
        "parameters": sum(p.numel() for p in model.parameters()),
        "embedding_dim": spec.embedding_dim,
        "score_seconds": time.perf_counter() - started,
        "torch_threads": threads,
        "within_domain": within,
        "cuhk03": across,
    }


def _strip(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if not k.startswith("_")}


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n\n")[0] if __doc__ else "", "pose_ablation.json")
    parser.add_argument("--work", type=Path, default=None, help="work folder for data and runs (default: a tmp dir)")
    parser.add_argument("--variants", default="a,b,c", help="comma-separated subset of a, b, c")
    parser.add_argument("--batch", type=int, default=64, help="embedding batch size")
    parser.add_argument("--jobs", type=int, default=1, help="variants trained at once, one process each")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per variant process")
    parser.add_argument("overrides", nargs="*", help="extra dotted config overrides for every variant")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    if not (SHARED_DATA / "market1501_half_train.tar").is_file():
        logger.error("needs ../shared/data (market1501_half_train.tar, cuhk03_64x128.tar, weights)")
        return 2
    torch.manual_seed(0)
    work = args.work or Path(tempfile.mkdtemp(prefix="pose_ablation-"))
    market, train_view, cuhk03_images = prepare_data(work)
    overrides = list(args.overrides)
    if args.quick:
        overrides += ["optim.steps_per_epoch=2", "optim.warmup_steps=1"]
    cuhk03 = read_cuhk03(cuhk03_images, train_pids=None, eval_pids=CUHK03_EVAL_PIDS)
    # One crop per person and camera (<pid>_05 queries camera A's <pid>_00), as benchmarks/zoo_cuhk03.py: all
    # 467 people at a fifth of the crops, which a loaded 2-core machine can embed for three models.
    last = CUHK03_EVAL_PIDS[0] + 20 if args.quick else CUHK03_EVAL_PIDS[1]
    cuhk03_query = [s for s in cuhk03.query if Path(s.path).stem.endswith("_05") and s.pid < last]
    cuhk03_gallery = [s for s in cuhk03.gallery if Path(s.path).stem.endswith("_00") and s.pid < last]

    keys = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [key for key in keys if key not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; valid: {sorted(VARIANTS)}")
    jobs = [(key, market, train_view, work / "runs", overrides, cuhk03_query, cuhk03_gallery, args.batch, args.threads)
            for key in keys]
    results: dict[str, Any] = {}
    if args.jobs > 1:
        # Variants are independent; on a shared machine each process gets its own share of the cores.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
            for key, entry in zip(keys, pool.map(_variant_job, jobs), strict=True):
                results[key] = entry
    else:
        for key, job in zip(keys, jobs, strict=True):
            results[key] = _variant_job(job)

    if "a" in results:
        for key in [k for k in results if k not in ("a", "0")]:
            for split in ("within_domain", "cuhk03"):
                base, other = results["a"][split]["_per_query"], results[key][split]["_per_query"]
                results[key][split]["vs_a"] = {
                    metric: paired_difference(base[metric], other[metric], base["ids"], RESAMPLES)
                    for metric in ("ap", "rank1")
                }
    rows = []
    for entry in results.values():
        w, c = entry["within_domain"], entry["cuhk03"]

        def cell(m: dict[str, Any], name: str) -> str:
            low, high = m[f"{name}_ci95"]
            return f"{m[name]:.3f} [{low:.3f}, {high:.3f}]"

        rows.append([entry["name"], cell(w, "mAP"), cell(w, "rank1"), cell(c, "mAP"), cell(c, "rank1"),
                     f"{entry['train_seconds']:.0f}", entry["command"]])
    table = markdown_table(
        ["variant", "Market-half test mAP [95% CI]", "rank-1", "CUHK03 1000-1466 mAP", "rank-1", "train s",
         "command"], rows)
    payload = {
        "benchmark": "pose_ablation",
        "protocol": {
            "train": "Market-1501 half: 300 people (5,400 crops), identity split seed 0",
            "within_domain": "Market-1501 half: the 75 held-out people, Market protocol",
            "across_domains": f"CUHK03 people {CUHK03_EVAL_PIDS[0]}-{CUHK03_EVAL_PIDS[1] - 1}: crop <pid>_05 "
                              "(camera B) queries a gallery of crop <pid>_00 (camera A) of every one of them",
            "intervals": f"95% percentile bootstrap over query identities, {RESAMPLES} resamples; vs_a: paired",
            "checkpoint": "the last step's (no selection on a test set)",
        },
        "quick": bool(args.quick),
        "overrides": overrides,
        "machine": machine_info(),
        # The checkpoints live in the work folder (a path of this machine): not part of the record.
        "results": {
            k: {**{f: x for f, x in v.items() if f != "checkpoint"},
                "within_domain": _strip(v["within_domain"]), "cuhk03": _strip(v["cuhk03"])}
            for k, v in results.items()
        },
        "table": table,
    }
    write_results(args.out, payload)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

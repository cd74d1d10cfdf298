"""Tracklet accuracy on real crops: does pooling a tracklet's crops beat one crop, which pooling and which
per-label gallery rule, and which no-match threshold per query size.

CUHK03 (../shared/data/cuhk03_64x128.tar: crops <pid>_<idx>.jpg, idx 00-04 camera A, 05-09 camera B) embedded
by OSNet-x0.25 with the torchreid Market-1501 weights (../shared/data/osnet_x0_25_market1501.pth), the first
``--people`` identities in sorted order. Camera-A crops are the gallery (labels = identities), camera-B crops the
queries; a tracklet is several camera-B crops of one person. All scoring goes through model/pooling.py and
training/calibration/threshold.py, the code the service and the calibration use.

1. rank-1 (top candidate label) for one crop, the mean of unit embeddings (``mean``), the quality-weighted mean
   (``consistency``), and the max over crops of each gallery item's score, under each per-label gallery rule
   (``max``, ``mean_top2``, ``mean_top3``, and a per-label centroid measured here only);
2. rank-1 by tracklet size (1..5 crops, random subsets, mean pooling, default rule);
3. thresholds: identities split in two halves (calibration / evaluation), 30 % of each half left out of its
   gallery (distractors); one threshold calibrated on single crops vs one per size bucket, F1 on the other half.

    .venv/bin/python -m benchmarks.tracklet_accuracy --out benchmarks/results/tracklet_accuracy.json
    .venv/bin/python -m benchmarks.tracklet_accuracy --quick --out /tmp/tracklets_quick.json
"""

from __future__ import annotations

import logging
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks.common import (
    SHARED_DATA,
    Stopwatch,
    base_parser,
    ensure_repo_on_path,
    machine_info,
    markdown_table,
    setup_logging,
    write_results,
)

ensure_repo_on_path()

from model.pooling import (  # noqa: E402
    DEFAULT_LABEL_RULE,
    DEFAULT_POOLING,
    LABEL_RULES,
    POOLING_METHODS,
    label_score_matrix,
    label_scores,
    pool_groups,
)
from model.thresholds import DEFAULT_BUCKETS, bucket_of  # noqa: E402
from training.calibration.threshold import (  # noqa: E402
    calibrate_size_buckets,
    calibrate_threshold,
    sample_tracklets,
    tracklet_top1,
)

logger = logging.getLogger(__name__)

CAMERA_A = [f"{i:02d}" for i in range(5)]
CAMERA_B = [f"{i:02d}" for i in range(5, 10)]
FETCH_DEPTHS = (10, 25, 50, 100)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def embed_cuhk03(tar_path: Path, weights: Path, people: int, input_size: tuple[int, int]) -> dict[str, Any]:
    """(P*10, D) embeddings of the first ``people`` identities, crops resized with PIL bilinear (the eval transform)."""
    from model.torchreid_import import load_torchreid_checkpoint

    model = load_torchreid_checkpoint(weights, arch="osnet_x0_25", input_size=input_size).eval()
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(tar_path) as tar:
            tar.extractall(tmp, filter="data")
        folder = Path(tmp) / "dataset" / "images" / "full"
        pids = sorted({p.name.split("_")[0] for p in folder.glob("*_00.jpg")})
        chosen = [pid for pid in pids if all((folder / f"{pid}_{i}.jpg").exists() for i in CAMERA_A + CAMERA_B)]
        chosen = chosen[:people]
        names = [f"{pid}_{i}.jpg" for pid in chosen for i in CAMERA_A + CAMERA_B]
        height, width = input_size
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(names), 64):
                batch = np.stack(
                    [
                        np.asarray(
                            Image.open(folder / n).convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
                        ).transpose(2, 0, 1)
                        for n in names[start : start + 64]
                    ]
                )
                chunks.append(model.embed(torch.from_numpy(batch)).numpy())
    emb = np.concatenate(chunks).astype(np.float32)
    pid = np.array([n.split("_")[0] for n in names])
    camera_b = np.array([n.split("_")[1].removesuffix(".jpg") in CAMERA_B for n in names])
    return {"emb": emb, "pid": pid, "camera_b": camera_b}


def rank1_table(q_emb: np.ndarray, q_pid: np.ndarray, g_emb: np.ndarray, g_pid: np.ndarray) -> dict[str, Any]:
    """rank-1 for every (query form, gallery rule) pair; every person has 5 queries crops and 5 gallery crops."""
    people = list(dict.fromkeys(q_pid.tolist()))
    tracklets = [np.flatnonzero(q_pid == p) for p in people]
    truth = np.array(people)
    g = _unit(g_emb.astype(np.float64))

    def centroid_scores(sim_items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        labels = np.array(list(dict.fromkeys(g_pid.tolist())))
        centroids = _unit(np.stack([g[g_pid == label].mean(axis=0) for label in labels]))
        return labels, centroids

    def rank1(per_query_items: np.ndarray, rule: str, queries: np.ndarray | None = None) -> float:
        if rule == "centroid":
            assert queries is not None, "centroid needs the query embeddings"
            labels, centroids = centroid_scores(per_query_items)
            scores = queries @ centroids.T
        else:
            labels, scores = label_score_matrix(per_query_items, g_pid, rule)
        return float((labels[scores.argmax(axis=1)] == truth).mean())

    rules = [*LABEL_RULES, "centroid"]
    table: dict[str, dict[str, float]] = {}
    q = _unit(q_emb.astype(np.float64))
    # single crops: each of the 5 camera-B crops on its own; the first one, and the mean over the five
    singles = [np.array([t[j] for t in tracklets]) for j in range(5)]
    table["1 crop (first)"] = {r: rank1(q[singles[0]] @ g.T, r, q[singles[0]]) for r in rules}
    table["1 crop (mean over the 5)"] = {
        r: float(np.mean([rank1(q[s] @ g.T, r, q[s]) for s in singles])) for r in rules
    }
    table["1 crop (best of the 5 positions)"] = {
        r: float(np.max([rank1(q[s] @ g.T, r, q[s]) for s in singles])) for r in rules
    }
    for method in POOLING_METHODS:
        pooled = pool_groups(q, tracklets, method).astype(np.float64)
        table[f"5 crops, pooling={method}"] = {r: rank1(pooled @ g.T, r, pooled) for r in rules}
    # max over the crops of each gallery item's score (5 searches per tracklet instead of one)
    max_items = np.stack([(q[t] @ g.T).max(axis=0) for t in tracklets])
    table["5 crops, max of per-crop scores"] = {r: rank1(max_items, r, None) for r in rules if r != "centroid"}

    # the service scores labels from the top_k hits only; the same rules over the 10 best items (top_k=10)
    def rank1_top_hits(queries: np.ndarray, rule: str, top_k: int = 10) -> float:
        sims = queries @ g.T
        best = np.argsort(-sims, axis=1, kind="stable")[:, :top_k]
        hits = 0
        for row, cols, person in zip(sims, best, truth, strict=True):
            hits += label_scores(row[cols], g_pid[cols].tolist(), rule)[0][0] == person
        return hits / len(truth)

    pooled_mean = pool_groups(q, tracklets, "mean").astype(np.float64)
    served = {
        "1 crop (first)": {r: rank1_top_hits(q[singles[0]], r) for r in LABEL_RULES},
        "5 crops, pooling=mean": {r: rank1_top_hits(pooled_mean, r) for r in LABEL_RULES},
    }
    # how deep a search the label rules need: 5-crop tracklets, rules over the best `depth` items
    by_depth = {str(depth): {r: rank1_top_hits(pooled_mean, r, depth) for r in LABEL_RULES} for depth in FETCH_DEPTHS}
    # one gallery crop per person (rules are then all the same)
    first_g = np.array([np.flatnonzero(g_pid == p)[0] for p in people])
    g1 = g[first_g]
    one_gallery = {
        "1 crop (first)": float(((q[singles[0]] @ g1.T).argmax(axis=1) == np.arange(len(people))).mean()),
        "5 crops, pooling=mean": float(
            ((pool_groups(q, tracklets, "mean") @ g1.T).argmax(axis=1) == np.arange(len(people))).mean()
        ),
    }
    return {
        "rank1": table,
        "rank1_top10_hits": served,
        "rank1_by_search_depth": by_depth,
        "rank1_one_gallery_crop": one_gallery,
        "rules": rules,
    }


def rank1_by_size(
    q_emb: np.ndarray, q_pid: np.ndarray, g_emb: np.ndarray, g_pid: np.ndarray, repeats: int, seed: int
) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, float]] = {}
    for size in range(1, 6):
        tracklets = sample_tracklets(q_pid, size, rng, per_identity=repeats)
        row: dict[str, float] = {"tracklets": float(len(tracklets))}
        for method in POOLING_METHODS:
            _, correct, _ = tracklet_top1(q_emb, q_pid, tracklets, g_emb, g_pid, method, DEFAULT_LABEL_RULE)
            row[method] = float(correct.mean())
        out[str(size)] = row
    return out


def decisions(scores: np.ndarray, correct: np.ndarray, has_match: np.ndarray, threshold: float) -> dict[str, float]:
    accept = scores >= threshold
    good = accept & correct & has_match
    accepts, positives = int(accept.sum()), int(has_match.sum())
    precision = good.sum() / accepts if accepts else 0.0
    recall = good.sum() / positives if positives else 0.0
    f1 = 2 * good.sum() / (accepts + positives) if accepts + positives else 0.0
    accuracy = (good.sum() + (~accept & ~has_match).sum()) / len(scores)
    return {
        "threshold": float(threshold),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "accuracy": float(accuracy),
        "queries": len(scores),
    }


def threshold_study(emb: np.ndarray, pid: np.ndarray, camera_b: np.ndarray, repeats: int, seed: int) -> dict[str, Any]:
    """Calibrate on half the identities, evaluate on the other half (each with 30 % distractor identities)."""
    people = np.array(list(dict.fromkeys(pid.tolist())))
    halves = {"calibration": people[0::2], "evaluation": people[1::2]}
    rng = np.random.default_rng(seed)
    prepared: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for name, ids in halves.items():
        in_gallery = set(ids[: round(len(ids) * 0.7)].tolist())
        g_rows = np.flatnonzero(~camera_b & np.isin(pid, list(in_gallery)))
        q_rows = np.flatnonzero(camera_b & np.isin(pid, ids))
        tracklets = [t for size in range(1, 6) for t in sample_tracklets(pid[q_rows], size, rng, repeats)]
        scores, correct, has_match = tracklet_top1(emb[q_rows], pid[q_rows], tracklets, emb[g_rows], pid[g_rows])
        sizes = np.array([len(t) for t in tracklets])
        prepared[name] = (np.stack([scores, correct, has_match]), sizes, np.array([]))
    cal, cal_sizes, _ = prepared["calibration"]
    single = calibrate_threshold(cal[0][cal_sizes == 1], cal[1][cal_sizes == 1] > 0, cal[2][cal_sizes == 1] > 0)
    buckets = calibrate_size_buckets(cal[0], cal[1] > 0, cal[2] > 0, cal_sizes, DEFAULT_BUCKETS)
    ev, ev_sizes, _ = prepared["evaluation"]
    mapping = dict.fromkeys(DEFAULT_BUCKETS, 0.0)
    keys = np.array([bucket_of(int(n), mapping) for n in ev_sizes], dtype=object)
    rows: dict[str, Any] = {}
    for key in DEFAULT_BUCKETS:
        sel = keys == key
        s, c, h = ev[0][sel], ev[1][sel] > 0, ev[2][sel] > 0
        rows[key] = {
            "single_threshold": decisions(s, c, h, single.threshold),
            "bucket_threshold": decisions(s, c, h, buckets[key].threshold),
            "mean_top1_score_true_match": float(s[c & h].mean()) if (c & h).any() else None,
            "mean_top1_score_distractor": float(s[~h].mean()) if (~h).any() else None,
        }
    return {
        "single_threshold": single.as_dict(),
        "bucket_thresholds": {k: v.as_dict() for k, v in buckets.items()},
        "evaluation_by_bucket": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0], "tracklet_accuracy.json")
    parser.add_argument("--people", type=int, default=200)
    parser.add_argument("--input-size", type=int, nargs=2, default=[256, 128], metavar=("H", "W"))
    parser.add_argument("--tar", type=Path, default=SHARED_DATA / "cuhk03_64x128.tar")
    parser.add_argument("--weights", type=Path, default=SHARED_DATA / "osnet_x0_25_market1501.pth")
    parser.add_argument("--repeats", type=int, default=3, help="random tracklets per identity and size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, help="npz of the embeddings: read when present, else written")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    if args.quick:
        args.people, args.input_size = 30, [128, 64]
    for path in (args.tar, args.weights):
        if not path.is_file():
            parser.error(f"{path} is absent (real data lives in ../shared/data inside the project workplace)")
    torch.manual_seed(args.seed)
    from_cache = args.cache is not None and args.cache.is_file()
    with Stopwatch() as sw:
        if from_cache:
            data = dict(np.load(args.cache))
        else:
            data = embed_cuhk03(args.tar, args.weights, args.people, tuple(args.input_size))
            if args.cache is not None:
                np.savez(args.cache, **data)
    logger.info("embedded %d crops in %.1f s", len(data["emb"]), sw.seconds)
    emb, pid, camera_b = data["emb"], data["pid"], data["camera_b"]
    table = rank1_table(emb[camera_b], pid[camera_b], emb[~camera_b], pid[~camera_b])
    by_size = rank1_by_size(emb[camera_b], pid[camera_b], emb[~camera_b], pid[~camera_b], args.repeats, args.seed)
    thresholds = threshold_study(emb, pid, camera_b, args.repeats, args.seed)
    payload = {
        "machine": machine_info(),
        "setup": {
            "people": len(set(pid.tolist())),
            "input_size": args.input_size,
            "model": "osnet_x0_25, torchreid Market-1501 weights (imported)",
            "gallery": "camera A, 5 crops per person",
            "queries": "camera B, 5 crops per person",
            "repeats": args.repeats,
            "seed": args.seed,
            "defaults": {"pooling": DEFAULT_POOLING, "label_rule": DEFAULT_LABEL_RULE},
            "embed_seconds": None if from_cache else sw.seconds,
            "embeddings_from_cache": from_cache,
        },
        **table,
        "rank1_by_size": by_size,
        "thresholds": thresholds,
    }
    write_results(args.out, payload)
    print(tracklet_tables(payload))
    return 0


def tracklet_tables(data: dict[str, Any]) -> str:
    """The docs/performance.md tables from a results payload."""
    rules = data["rules"]
    rows = [(name, *(per.get(r) for r in rules)) for name, per in data["rank1"].items()]
    rows += [
        (f"{name}, top-10 hits only", *(per.get(r) for r in rules)) for name, per in data["rank1_top10_hits"].items()
    ]
    size_rows = [
        (size, int(row["tracklets"]), *(row[m] for m in POOLING_METHODS)) for size, row in data["rank1_by_size"].items()
    ]
    depth_rows = [(depth, *(per[r] for r in LABEL_RULES)) for depth, per in data["rank1_by_search_depth"].items()]
    th = data["thresholds"]
    th_rows = []
    for key, row in th["evaluation_by_bucket"].items():
        single, bucket = row["single_threshold"], row["bucket_threshold"]
        th_rows.append(
            (
                key,
                single["queries"],
                row["mean_top1_score_true_match"],
                row["mean_top1_score_distractor"],
                single["threshold"],
                single["f1"],
                single["accuracy"],
                bucket["threshold"],
                bucket["f1"],
                bucket["accuracy"],
            )
        )
    setup = data["setup"]
    return "\n".join(
        [
            f"CUHK03, {setup['people']} people, {setup['model']}, input {setup['input_size'][0]}x"
            f"{setup['input_size'][1]}; gallery {setup['gallery']}; queries {setup['queries']}.",
            "",
            markdown_table(["query (rank-1)", *[f"gallery rule {r}" for r in rules]], rows),
            "",
            markdown_table(
                ["items searched (5-crop tracklets)", *[f"rank-1, gallery rule {r}" for r in LABEL_RULES]],
                sorted(depth_rows, key=lambda row: int(row[0])),
            ),
            "",
            markdown_table(
                ["crops per tracklet", "tracklets", *[f"rank-1, pooling={m}" for m in POOLING_METHODS]], size_rows
            ),
            "",
            markdown_table(
                [
                    "size bucket",
                    "queries",
                    "mean top-1 score (right match)",
                    "mean top-1 score (distractor)",
                    "single threshold",
                    "F1",
                    "accuracy",
                    "bucket threshold",
                    "F1",
                    "accuracy",
                ],
                th_rows,
            ),
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())

"""reid-calibrate: the no-match threshold of any checkpoint (trained or imported), measured on labelled crops.

    reid-calibrate artifacts/osnet_x0_25.safetensors --data-format cuhk03 --data-root cuhk03/images \\
        --out artifacts/osnet_x0_25_calibrated.safetensors

The crops are arranged in collections shaped like the service's galleries: each holds ``gallery_size``
registered people (all their gallery crops); one query crop of each registered person is asked, plus query
crops of people NOT registered, ``absent_share`` of all queries. A query is answered when its top-1 score
reaches the threshold; the answer is correct when the top-1 item is the query's person.

Objective: the highest share of correct answers among queries of registered people (recall) with
precision of returned matches >= ``target_precision`` (default 0.9). When no threshold reaches it (with at
least ``min_recall``), nothing is written: the command says so and lists what lower targets would give.
The threshold, the objective, the data and the measured precision / recall go into the checkpoint's
``calibration`` model card (``CheckpointSpec.calibration``), which GET /info shows.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import defaultdict
from collections.abc import Hashable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from training.calibration.threshold import (
    OperatingPoint,
    PrecisionCalibration,
    calibrate_for_precision,
    operating_point_at,
)
from training.evaluation.evaluate import Embeddings

logger = logging.getLogger(__name__)

DATA_FORMATS = ("soccernet", "market1501", "cuhk03", "folder")
# A match gallery: 22 players and 3 referees.
DEFAULT_GALLERY_SIZE = 25
# One query in five is of somebody not registered (crowd, staff, a substitute nobody registered).
DEFAULT_ABSENT_SHARE = 0.2
DEFAULT_COLLECTIONS = 200
DEFAULT_TARGET_PRECISION = 0.9
DEFAULT_MIN_RECALL = 0.05
# What the service uses for a checkpoint without a threshold (service.core.settings: REID_DEFAULT_THRESHOLD).
SERVICE_DEFAULT_THRESHOLD = 0.5
EXIT_INFEASIBLE = 2


@dataclass(frozen=True)
class CollectionShape:
    """How the simulated collections look (see module docstring)."""

    gallery_size: int = DEFAULT_GALLERY_SIZE
    absent_share: float = DEFAULT_ABSENT_SHARE
    collections: int = DEFAULT_COLLECTIONS
    crops_per_person: int = 0  # gallery crops registered per person; 0 = all the data set has
    seed: int = 0

    def __post_init__(self) -> None:
        if self.gallery_size < 1:
            raise ValueError(f"gallery_size must be >= 1, got {self.gallery_size}")
        if not 0.0 <= self.absent_share < 1.0:
            raise ValueError(f"absent_share must be in [0, 1), got {self.absent_share}")
        if self.collections < 1:
            raise ValueError(f"collections must be >= 1, got {self.collections}")
        if self.crops_per_person < 0:
            raise ValueError(f"crops_per_person must be >= 0, got {self.crops_per_person}")


@dataclass(frozen=True)
class CollectionQueries:
    """Top-1 outcome of every simulated query: scores (N,) float64, correct (N,) bool, has_match (N,) bool."""

    scores: np.ndarray
    correct: np.ndarray
    has_match: np.ndarray
    collections: int
    mean_gallery_people: float
    mean_gallery_crops: float


def _identities(emb: Embeddings) -> dict[tuple[Hashable, int], list[int]]:
    rows: dict[tuple[Hashable, int], list[int]] = defaultdict(list)
    for i, (group, pid) in enumerate(zip(emb.groups, emb.pids, strict=True)):
        rows[(str(group), int(pid))].append(i)
    return rows


def simulate_collections(query: Embeddings, gallery: Embeddings, shape: CollectionShape) -> CollectionQueries:
    """Build ``shape.collections`` galleries and ask their queries (see module docstring).

    People are (group, pid) pairs; when the data has several groups (SoccerNet actions, where an identity
    only exists within its action) each collection is drawn from one group, else from all people.

    Args:
        query: query-side embeddings, feats (Nq, D) L2-normalised.
        gallery: gallery-side embeddings, feats (Ng, D) L2-normalised.
    """
    q_rows, g_rows = _identities(query), _identities(gallery)
    registrable = sorted(k for k in q_rows if k in g_rows)  # a crop to register and another to ask with
    askable = sorted(q_rows)
    if not registrable:
        raise ValueError("no person has both a gallery crop and a query crop: nothing to calibrate on")
    groups = sorted({k[0] for k in askable}, key=str)
    rng = np.random.default_rng(shape.seed)
    q_feats = np.asarray(query.feats, dtype=np.float32)
    g_feats = np.asarray(gallery.feats, dtype=np.float32)
    scores: list[np.ndarray] = []
    correct: list[np.ndarray] = []
    has_match: list[np.ndarray] = []
    people, crops = [], []
    for c in range(shape.collections):
        group = groups[c % len(groups)] if len(groups) > 1 else None
        reg_pool = [k for k in registrable if group is None or k[0] == group]
        ask_pool = [k for k in askable if group is None or k[0] == group]
        if not reg_pool:
            continue
        # Room for the absent people: n_reg registered + n_abs absent must fit in the pool.
        n_reg = min(shape.gallery_size, len(reg_pool), max(1, int(len(ask_pool) * (1 - shape.absent_share))))
        registered = [reg_pool[i] for i in rng.choice(len(reg_pool), n_reg, replace=False)]
        chosen = set(registered)
        others = [k for k in ask_pool if k not in chosen]
        n_abs = min(len(others), round(n_reg * shape.absent_share / (1 - shape.absent_share)))
        absent = [others[i] for i in rng.choice(len(others), n_abs, replace=False)] if n_abs else []

        g_idx: list[int] = []
        g_owner: list[int] = []
        for n, person in enumerate(registered):
            rows = g_rows[person]
            if shape.crops_per_person and len(rows) > shape.crops_per_person:
                rows = [rows[i] for i in rng.choice(len(rows), shape.crops_per_person, replace=False)]
            g_idx += rows
            g_owner += [n] * len(rows)
        asked = [*registered, *absent]
        q_idx = [q_rows[p][int(rng.integers(len(q_rows[p])))] for p in asked]
        sim = q_feats[q_idx] @ g_feats[g_idx].T  # (n_queries, n_gallery_crops)
        best = sim.argmax(axis=1)
        owner = np.asarray(g_owner)[best]
        is_registered = np.arange(len(asked)) < n_reg
        scores.append(sim[np.arange(len(asked)), best].astype(np.float64))
        correct.append(is_registered & (owner == np.arange(len(asked))))
        has_match.append(is_registered)
        people.append(n_reg)
        crops.append(len(g_idx))
    if not scores:
        raise ValueError("no collection could be built from these crops")
    return CollectionQueries(
        scores=np.concatenate(scores),
        correct=np.concatenate(correct),
        has_match=np.concatenate(has_match),
        collections=len(scores),
        mean_gallery_people=float(np.mean(people)),
        mean_gallery_crops=float(np.mean(crops)),
    )


def model_card(
    result: PrecisionCalibration,
    outcome: CollectionQueries,
    shape: CollectionShape,
    data: dict[str, Any],
    previous_threshold: float | None,
    before: OperatingPoint,
) -> dict[str, Any]:
    """The ``calibration`` entry of the checkpoint spec (JSON-ready)."""
    chosen = result.chosen
    return {
        "tool": "reid-calibrate",
        "calibrated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "objective": (
            f"highest recall (share of queries of registered people answered with the right person) with "
            f"precision of returned matches >= {result.target_precision} and recall >= {result.min_recall}"
        ),
        "target_precision": result.target_precision,
        "threshold": None if chosen is None else chosen.threshold,
        "precision": None if chosen is None else chosen.precision,
        "recall": None if chosen is None else chosen.recall,
        "absent_false_match": None if chosen is None else chosen.absent_false_match,
        "answered": None if chosen is None else chosen.answered,
        "data": data,
        "collections": {
            **asdict(shape),
            "built": outcome.collections,
            "queries": result.num_queries,
            "absent_queries": result.num_absent,
            "mean_gallery_people": round(outcome.mean_gallery_people, 2),
            "mean_gallery_crops": round(outcome.mean_gallery_crops, 2),
        },
        "other_targets": {k: None if v is None else v.as_dict() for k, v in result.curve.items()},
        "previous_threshold": previous_threshold,
        # The same queries at the threshold the checkpoint was served with before (the default when it had none).
        "before": before.as_dict(),
    }


def read_calibration_split(fmt: str, root: Path, eval_split: str, cuhk03_pids: tuple[int, int]) -> Any:
    """Query / gallery crops of a data set; Market's pid 0 (distractor boxes, nobody) is dropped."""
    from training.data.readers import ReidSplit, read_cuhk03, read_folder, read_market1501, read_soccernet

    if fmt == "soccernet":
        return read_soccernet(root, eval_split=eval_split, train_split=None)
    if fmt == "market1501":
        split = read_market1501(root)
        return ReidSplit(
            split.name, [], [s for s in split.query if s.pid != 0], [s for s in split.gallery if s.pid != 0], 0
        )
    if fmt == "cuhk03":
        return read_cuhk03(root, train_pids=None, eval_pids=cuhk03_pids)
    if fmt == "folder":
        return read_folder(root)
    raise ValueError(f"unknown data format {fmt!r}; valid: {', '.join(DATA_FORMATS)}")


def calibrate_checkpoint(
    checkpoint: Path,
    out: Path,
    data_format: str,
    data_root: Path,
    shape: CollectionShape = CollectionShape(),
    target_precision: float = DEFAULT_TARGET_PRECISION,
    min_recall: float = DEFAULT_MIN_RECALL,
    device: str = "auto",
    batch_size: int = 64,
    eval_split: str = "valid",
    cuhk03_pids: tuple[int, int] = (1000, 1467),
    progress: bool = False,
) -> tuple[PrecisionCalibration, dict[str, Any]]:
    """Embed the crops, simulate the collections, choose the threshold; write ``out`` only when one qualifies.

    Returns the calibration result and the model card (written into ``out`` when feasible).
    """
    from model import load_checkpoint, save_checkpoint
    from model.device import resolve_device
    from training.evaluation.evaluate import extract_embeddings

    split = read_calibration_split(data_format, data_root, eval_split, cuhk03_pids)
    torch_device = resolve_device(device)
    model, spec = load_checkpoint(checkpoint, torch_device)
    query = extract_embeddings(model, split.query, torch_device, batch_size, progress=progress)
    gallery = extract_embeddings(model, split.gallery, torch_device, batch_size, progress=progress)
    outcome = simulate_collections(query, gallery, shape)
    result = calibrate_for_precision(outcome.scores, outcome.correct, outcome.has_match, target_precision, min_recall)
    data = {
        "format": data_format,
        "name": split.name,
        "root": data_root.name,  # the folder name only: no machine paths in a shipped checkpoint
        "people": len({(str(s.group), s.pid) for s in [*split.query, *split.gallery]}),
        "query_crops": len(split.query),
        "gallery_crops": len(split.gallery),
    }
    if data_format == "cuhk03":
        data["cuhk03_pids"] = list(cuhk03_pids)
    if data_format == "soccernet":
        data["split"] = eval_split
    before_threshold = spec.threshold if spec.threshold is not None else SERVICE_DEFAULT_THRESHOLD
    before = operating_point_at(before_threshold, outcome.scores, outcome.correct, outcome.has_match)
    card = model_card(result, outcome, shape, data, spec.threshold, before)
    if result.chosen is not None:
        save_checkpoint(
            model.cpu(),
            out,
            threshold=result.chosen.threshold,
            metrics=spec.metrics,
            train_meta=spec.train_meta,
            provenance=spec.provenance,  # where the weights and data came from stays in the model card
            calibration=card,
        )
        logger.info("wrote %s with threshold %.4f", out, result.chosen.threshold)
    return result, card


def calibrate_main(argv: list[str] | None = None) -> int:
    """reid-calibrate CHECKPOINT --data-format F --data-root DIR --out NEW.safetensors [options]."""
    parser = argparse.ArgumentParser(
        prog="reid-calibrate",
        description="Calibrate the no-match threshold of a checkpoint on labelled crops arranged like the "
        "service's galleries. Objective: the most correct answers with precision of returned matches >= "
        "--target-precision. Exit 2 (nothing written) when no threshold reaches it.",
    )
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument(
        "--data-format",
        required=True,
        choices=DATA_FORMATS,
        help="folder: <label>/<image files>, one subfolder per person (first half of each "
        "person's images registered, the rest asked)",
    )
    parser.add_argument(
        "--data-root", type=Path, required=True, help="data set root (CUHK03: the folder of <pid>_<idx>.jpg)"
    )
    parser.add_argument("--out", type=Path, required=True, help="calibrated checkpoint to write")
    parser.add_argument(
        "--target-precision",
        type=float,
        default=DEFAULT_TARGET_PRECISION,
        help="share of returned matches that must be right (default %(default)s)",
    )
    parser.add_argument(
        "--min-recall",
        type=float,
        default=DEFAULT_MIN_RECALL,
        help="a threshold answering fewer correct queries than this does not count (default %(default)s)",
    )
    parser.add_argument(
        "--gallery-size",
        type=int,
        default=DEFAULT_GALLERY_SIZE,
        help="people registered per collection (default %(default)s: 22 players + 3 referees)",
    )
    parser.add_argument(
        "--absent-share",
        type=float,
        default=DEFAULT_ABSENT_SHARE,
        help="share of queries whose person is not registered (default %(default)s)",
    )
    parser.add_argument(
        "--collections", type=int, default=DEFAULT_COLLECTIONS, help="simulated collections (default %(default)s)"
    )
    parser.add_argument(
        "--crops-per-person", type=int, default=0, help="gallery crops registered per person; 0 = all (default)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-split", default="valid", help="SoccerNet split: valid | test")
    parser.add_argument(
        "--cuhk03-pids",
        type=int,
        nargs=2,
        default=(1000, 1467),
        metavar=("LOW", "HIGH"),
        help="CUHK03 person ids used, [LOW, HIGH) (default: the usual held-out 1000-1466)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads on CPU; 0 = torch's default (1 is faster on a busy machine)",
    )
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    if not args.checkpoint.is_file():
        parser.error(f"no such file: {args.checkpoint}")
    if not args.data_root.is_dir():
        parser.error(f"no such folder: {args.data_root}")
    try:
        shape = CollectionShape(
            args.gallery_size, args.absent_share, args.collections, args.crops_per_person, args.seed
        )
        result, card = calibrate_checkpoint(
            args.checkpoint,
            args.out,
            args.data_format,
            args.data_root,
            shape,
            args.target_precision,
            args.min_recall,
            args.device,
            args.batch_size,
            args.eval_split,
            tuple(args.cuhk03_pids),
            progress=True,
        )
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
    sys.stdout.write(json.dumps(card, indent=2) + "\n")
    if not result.feasible:
        sys.stderr.write(
            f"reid-calibrate: {result.explain()}\nnothing written; lower --target-precision or use a better model\n"
        )
        return EXIT_INFEASIBLE
    sys.stderr.write(f"reid-calibrate: {result.explain()}; wrote {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(calibrate_main())

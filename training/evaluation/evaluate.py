"""Embedding extraction and whole-model evaluation on a data split (used by the loop, reid-eval and reid-export).

    result = evaluate_model(model, split, protocol="soccernet", device=torch.device("cpu"))
    result.metrics["mAP"], result.calibration.threshold
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from model import ReIDModel
from model.device import autocast_for
from training.calibration.threshold import Calibration, calibrate_threshold, top1_from_embeddings
from training.data.readers import UNLABELLED_PID, ReidImageDataset, ReidSplit, Sample
from training.data.transforms import eval_transform
from training.evaluation.metrics import compute_distance_matrix, evaluate_market, evaluate_soccernet

logger = logging.getLogger(__name__)

PROTOCOLS = ("soccernet", "market")


@dataclass
class Embeddings:
    """Embeddings of a sample list: feats (N, D) float32, L2-normalised; pids, camids (N,); groups (N,)."""

    feats: np.ndarray
    pids: np.ndarray
    camids: np.ndarray
    groups: np.ndarray
    paths: list[str]


@torch.inference_mode()
def extract_embeddings(
    model: ReIDModel,
    samples: Sequence[Sample],
    device: torch.device,
    batch_size: int = 128,
    workers: int = 0,
    amp: bool = True,
    progress: bool = False,
) -> Embeddings:
    """Run ``model.embed`` over the samples with the checkpoint's eval preprocessing (resize + [0, 1])."""
    was_training = model.training
    model.eval()
    dataset = ReidImageDataset(samples, eval_transform(model.input_size))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda")
    chunks: list[np.ndarray] = []
    iterator: Any = loader
    if progress:
        from tqdm import tqdm

        iterator = tqdm(loader, desc="embedding", unit="batch", leave=False)
    for images, _, _, _ in iterator:
        images = images.to(device, non_blocking=True)
        with autocast_for(device, amp):
            chunks.append(model.embed(images).float().cpu().numpy())
    model.train(was_training)
    feats = np.concatenate(chunks) if chunks else np.zeros((0, model.embedding_dim), np.float32)
    return Embeddings(
        feats=feats,
        pids=np.array([s.pid for s in samples]),
        camids=np.array([s.camid for s in samples]),
        groups=np.array([s.group for s in samples], dtype=object),
        paths=[str(s.path) for s in samples],
    )


def score(query: Embeddings, gallery: Embeddings, protocol: str) -> tuple[dict[str, Any], np.ndarray]:
    """Metrics of one query/gallery pair under ``protocol``; returns (metrics, distmat (num_q, num_g))."""
    distmat = compute_distance_matrix(query.feats, gallery.feats, metric="cosine")
    if protocol == "soccernet":
        metrics = evaluate_soccernet(distmat, query.pids, gallery.pids, query.groups, gallery.groups)
    elif protocol == "market":
        metrics = evaluate_market(distmat, query.pids, gallery.pids, query.camids, gallery.camids)
    else:
        raise ValueError(f"unknown protocol {protocol!r}; valid: {PROTOCOLS}")
    return metrics, distmat


def calibrate_with_distractors(
    query: Embeddings, gallery: Embeddings, absent_fraction: float = 0.5, seed: int = 0
) -> Calibration:
    """Calibrate the no-match threshold with distractor queries.

    A validation split has a match for every query, so the gallery crops of a random ``absent_fraction`` of
    the query identities (per group) are hidden: those queries become "person not in the gallery" cases, the
    rest stay answerable. The threshold that best separates correct top-1 matches from both wrong matches and
    distractors is then chosen by ``calibrate_threshold``.
    """
    if not 0.0 < absent_fraction < 1.0:
        raise ValueError(f"absent_fraction must be in (0, 1), got {absent_fraction}")
    rng = np.random.default_rng(seed)
    identities = sorted({(str(g), int(p)) for g, p in zip(query.groups, query.pids, strict=True)})
    absent = {identities[i] for i in rng.permutation(len(identities))[: round(len(identities) * absent_fraction)]}
    keep = np.array(
        [(str(g), int(p)) not in absent for g, p in zip(gallery.groups, gallery.pids, strict=True)], dtype=bool
    )
    scores, correct, has_match = top1_from_embeddings(
        query.feats, query.pids, gallery.feats[keep], gallery.pids[keep], query.groups, gallery.groups[keep]
    )
    return calibrate_threshold(scores, correct, has_match)


@dataclass
class EvalResult:
    """metrics (mAP, rank1, cmc, ...), the calibrated threshold, both embedding sets, distmat (num_q, num_g)
    and the protocol ("soccernet": rank within each action; "market": drop same id + same camera)."""

    metrics: dict[str, Any]
    calibration: Calibration
    query: Embeddings
    gallery: Embeddings
    distmat: np.ndarray
    protocol: str = "soccernet"


def protocol_for(split: ReidSplit) -> str:
    return "soccernet" if split.name.startswith("soccernet") else "market"


def evaluate_model(
    model: ReIDModel,
    split: ReidSplit,
    device: torch.device,
    batch_size: int = 128,
    workers: int = 0,
    amp: bool = True,
    progress: bool = False,
) -> EvalResult:
    """Embed the split's query and gallery, score them with the split's protocol, calibrate the threshold."""
    if not split.query or not split.gallery:
        raise ValueError(f"{split.name}: evaluation needs query and gallery samples")
    if all(s.pid == UNLABELLED_PID for s in split.query):
        # Every hidden pid is the same -1: each gallery crop would count as a match and mAP would read 1.0.
        raise ValueError(f"{split.name}: labels are hidden, there is no score to compute; write the challenge "
                         "ranking file with reid-eval --eval-split challenge --out DIR")
    query = extract_embeddings(model, split.query, device, batch_size, workers, amp, progress)
    gallery = extract_embeddings(model, split.gallery, device, batch_size, workers, amp, progress)
    protocol = protocol_for(split)
    metrics, distmat = score(query, gallery, protocol)
    calibration = calibrate_with_distractors(query, gallery)
    logger.info("%s: mAP %.4f rank-1 %.4f threshold %.3f", split.name, metrics["mAP"], metrics["rank1"],
                calibration.threshold)
    return EvalResult(metrics, calibration, query, gallery, distmat, protocol)

"""Training and evaluation figures written as PNG files (matplotlib, headless Agg backend).

Called by the training loop / evaluation CLI, e.g.::

    plot_loss_curves(records, run_dir / "loss.png")          # records read from metrics.jsonl
    plot_cmc(metrics["cmc"], run_dir / "cmc.png")
    plot_ranked_grid(q_paths, g_paths, ranked, correct, run_dir / "ranked.png")
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

# Selected before pyplot is imported so that training on a headless machine never needs a display.
matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

_CORRECT = (0, 170, 0)
_WRONG = (220, 0, 0)
_QUERY = (40, 90, 220)
# Thumbnail cell (h, w) matching the 2:1 aspect of player crops.
_CELL = (128, 64)
_BORDER = 4
_NOT_LOSSES = frozenset({"step", "epoch", "iteration", "batch_size", "images_per_s", "samples_per_s"})


def _is_loss_key(key: str, value: object) -> bool:
    # Metrics JSONL rows also carry bookkeeping numbers whose scale would flatten the loss lines.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return key not in _NOT_LOSSES and not key.startswith(("lr", "time", "throughput"))


def plot_loss_curves(
    records: Sequence[Mapping[str, object]], out_png: str | Path, keys: Sequence[str] | None = None
) -> Path:
    """One line per loss key of the training records, against "step".

    Args:
        records: dicts with a "step" key and loss values, e.g. {"step": 10, "loss": 2.3, "triplet": 0.4};
            keys missing from some records are plotted where present.
        out_png: destination PNG path (parent folders are created).
        keys: keys to plot; by default every numeric key except step/epoch and names starting with
            "lr", "time" or "throughput".

    Returns:
        The written path.
    """
    if keys is None:
        keys = sorted({k for r in records for k, v in r.items() if _is_loss_key(k, v)})
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    try:
        for key in keys:
            pts = [(float(r["step"]), float(r[key])) for r in records if key in r and "step" in r]  # type: ignore[arg-type]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, label=key, linewidth=1.2)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title("training losses")
        ax.grid(alpha=0.3)
        if keys:
            ax.legend(loc="upper right", fontsize=8)
        return _save(fig, out_png)
    finally:
        plt.close(fig)


def plot_cmc(cmc: Sequence[float] | np.ndarray, out_png: str | Path, title: str = "CMC") -> Path:
    """CMC curve: fraction of queries with a correct match within the top k, for k = 1..len(cmc).

    Args:
        cmc: (max_rank,) values in [0, 1].
        out_png: destination PNG path.
        title: figure title.
    """
    values = np.asarray(cmc, dtype=np.float64).ravel()
    ranks = np.arange(1, values.size + 1)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    try:
        ax.plot(ranks, values, marker="o", markersize=3, linewidth=1.2)
        ax.set_xlabel("rank k")
        ax.set_ylabel("matching rate")
        ax.set_ylim(0.0, 1.02)
        ax.set_xlim(1, max(int(ranks[-1]) if ranks.size else 1, 2))
        ax.set_title(f"{title} (rank-1 {values[0]:.1%})" if values.size else title)
        ax.grid(alpha=0.3)
        return _save(fig, out_png)
    finally:
        plt.close(fig)


def _thumbnail(path: str | Path, border_rgb: tuple[int, int, int]) -> Image.Image:
    """Crop resized to the cell, framed by a coloured border; an unreadable file gives a grey placeholder."""
    h, w = _CELL
    inner = (w - 2 * _BORDER, h - 2 * _BORDER)
    try:
        with Image.open(path) as img:
            crop = img.convert("RGB").resize(inner)
    except OSError:
        logger.warning("cannot read %s for the ranked grid; drawing a placeholder", path)
        crop = Image.new("RGB", inner, (128, 128, 128))
    cell = Image.new("RGB", (w, h), border_rgb)
    cell.paste(crop, (_BORDER, _BORDER))
    return cell


def plot_ranked_grid(
    query_paths: Sequence[str | Path],
    gallery_paths: Sequence[str | Path],
    ranked_indices: np.ndarray,
    correct: np.ndarray,
    out_png: str | Path,
    top: int = 10,
    max_queries: int = 8,
) -> Path:
    """Retrieval examples: one row per query, the query (blue frame) then its top gallery crops framed green
    (same identity) or red.

    Args:
        query_paths: (num_q,) image paths of the queries.
        gallery_paths: (num_g,) image paths of the gallery.
        ranked_indices: (num_q, >= top) gallery indices, best first.
        correct: (num_q, >= top) bool, whether each ranked item has the query's identity.
        out_png: destination PNG path.
        top: ranked items shown per query.
        max_queries: rows shown (the first queries).

    Returns:
        The written path; the image is (rows * 128 + gaps) x ((top + 1) * 64 + gap) pixels.
    """
    ranked = np.asarray(ranked_indices)
    hits = np.asarray(correct, dtype=bool)
    if ranked.ndim != 2 or hits.shape != ranked.shape:
        raise ValueError(f"ranked_indices {ranked.shape} and correct {hits.shape} must be equal 2-D shapes")
    if ranked.shape[0] != len(query_paths):
        raise ValueError(f"{len(query_paths)} query paths for {ranked.shape[0]} ranked rows")
    if ranked.shape[1] < top:
        raise ValueError(f"need at least top={top} ranked items per query, got {ranked.shape[1]}")
    rows = min(max_queries, ranked.shape[0])
    if rows == 0:
        raise ValueError("no query to draw")
    h, w = _CELL
    gap = 12  # separates the query column from its results
    canvas = Image.new("RGB", ((top + 1) * w + gap, rows * (h + 4)), (255, 255, 255))
    for r in range(rows):
        y = r * (h + 4)
        canvas.paste(_thumbnail(query_paths[r], _QUERY), (0, y))
        for c in range(top):
            colour = _CORRECT if hits[r, c] else _WRONG
            tile = _thumbnail(gallery_paths[int(ranked[r, c])], colour)
            canvas.paste(tile, (w + gap + c * w, y))
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, format="PNG")
    logger.info("wrote ranked grid of %d queries to %s", rows, out)
    return out


def _save(fig: plt.Figure, out_png: str | Path) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, format="png")
    logger.info("wrote %s", out)
    return out


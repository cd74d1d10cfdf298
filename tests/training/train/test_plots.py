"""The figures are written as decodable PNGs of plausible size and content."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.train.plots import plot_cmc, plot_loss_curves, plot_ranked_grid


def _open(path: Path) -> Image.Image:
    assert path.is_file()
    img = Image.open(path)
    img.load()
    assert img.format == "PNG"
    return img


def test_loss_curves_png(tmp_path: Path) -> None:
    records = [{"step": s, "loss": 3.0 / (s + 1), "triplet": 0.5 / (s + 1)} for s in range(0, 200, 10)]
    records.append({"step": 200, "loss": 0.01, "lr": 3e-4})
    out = plot_loss_curves(records, tmp_path / "nested" / "loss.png")
    img = _open(out)
    assert img.size == (700, 400)
    # Not a blank canvas: lines and labels give many distinct colours.
    assert len(img.convert("RGB").getcolors(maxcolors=100_000) or []) > 10


def test_loss_curves_ignore_bookkeeping_keys(tmp_path: Path) -> None:
    plain = [{"step": s, "loss": 1.0 / (s + 1)} for s in range(20)]
    noisy = [{**r, "lr": 1000.0, "epoch": 3, "time_s": 9e4} for r in plain]
    a = np.asarray(_open(plot_loss_curves(plain, tmp_path / "a.png")).convert("RGB"))
    b = np.asarray(_open(plot_loss_curves(noisy, tmp_path / "b.png")).convert("RGB"))
    c = np.asarray(_open(plot_loss_curves(noisy, tmp_path / "c.png", keys=["loss", "lr"])).convert("RGB"))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_cmc_png(tmp_path: Path) -> None:
    out = plot_cmc(np.linspace(0.6, 1.0, 50), tmp_path / "cmc.png")
    img = _open(out)
    assert img.size == (600, 400)
    assert len(img.convert("RGB").getcolors(maxcolors=100_000) or []) > 10


def _crop(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (48, 96)) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path


def test_ranked_grid_layout_and_border_colours(tmp_path: Path) -> None:
    queries = [_crop(tmp_path / f"q{i}.png", (200, 200, 0)) for i in range(3)]
    gallery = [_crop(tmp_path / f"g{j}.png", (0, 0, 0)) for j in range(12)]
    rng = np.random.default_rng(0)
    ranked = np.stack([rng.permutation(12) for _ in range(3)])
    correct = np.zeros((3, 12), dtype=bool)
    correct[0, 0] = True
    out = plot_ranked_grid(queries, gallery, ranked, correct, tmp_path / "grid.png", top=10, max_queries=2)
    img = _open(out).convert("RGB")
    cell_w, cell_h, gap = 64, 128, 12
    assert img.size == (11 * cell_w + gap, 2 * (cell_h + 4))
    # Border pixel of the first result: green when correct, red otherwise; query frame is neither.
    first = img.getpixel((cell_w + gap + 1, 1))
    second = img.getpixel((2 * cell_w + gap + 1, 1))
    assert first[1] > 150 and first[0] < 50
    assert second[0] > 150 and second[1] < 50
    query_border = img.getpixel((1, 1))
    assert query_border not in (first, second)
    # The crop itself is pasted inside the frame.
    assert img.getpixel((cell_w + gap + 32, 64)) == (0, 0, 0)


def test_ranked_grid_unreadable_file_gives_placeholder(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    ranked = np.arange(10)[None, :]
    out = plot_ranked_grid([bad], [bad] * 10, ranked, np.ones((1, 10), dtype=bool), tmp_path / "g.png")
    assert _open(out).size == (11 * 64 + 12, 132)


def test_ranked_grid_rejects_short_rankings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="top=10"):
        plot_ranked_grid(["q"], ["g"] * 5, np.zeros((1, 5), int), np.zeros((1, 5), bool), tmp_path / "x.png")

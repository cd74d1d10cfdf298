"""Image decoding and train/eval transforms: shapes, [0, 1] range, exact eval preprocessing, augmentations."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.data.transforms import (
    AugmentConfig,
    eval_transform,
    load_rgb,
    random_erase,
    random_pad_crop,
    train_transform,
)


def _gradient_image(width: int = 40, height: int = 90) -> Image.Image:
    xs = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    ys = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    rgb = np.stack([xs + 0 * ys, ys + 0 * xs, (xs + ys) / 2], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "I;16", "CMYK"])
def test_load_rgb_converts_any_mode(tmp_path: Path, mode: str) -> None:
    source = _gradient_image()
    image = source.convert(mode) if mode != "I;16" else source.convert("L").convert("I;16")
    suffix = ".jpg" if mode == "CMYK" else ".png"
    path = tmp_path / f"crop{suffix}"
    image.save(path)
    loaded = load_rgb(path)
    assert loaded.mode == "RGB" and loaded.size == (40, 90)
    from_bytes = load_rgb(path.read_bytes())
    assert np.array_equal(np.asarray(from_bytes), np.asarray(loaded))


def test_load_rgb_rejects_non_images(tmp_path: Path) -> None:
    path = tmp_path / "fake.png"
    path.write_bytes(b"definitely not an image")
    with pytest.raises(OSError):
        load_rgb(path)


def test_eval_transform_is_pil_bilinear_resize_scaled_to_unit_range() -> None:
    buffer = io.BytesIO()
    _gradient_image(53, 117).save(buffer, format="JPEG", quality=90)
    image = load_rgb(buffer.getvalue())
    x = eval_transform((64, 32))(image)
    assert x.shape == (3, 64, 32) and x.dtype == torch.float32
    expected = np.asarray(image.resize((32, 64), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    assert torch.equal(x, torch.from_numpy(expected).permute(2, 0, 1))
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    same = eval_transform((90, 40))(_gradient_image())  # already the target size: values unchanged
    assert torch.equal(same, torch.from_numpy(np.asarray(_gradient_image(), dtype=np.float32) / 255.0).permute(2, 0, 1))


def test_eval_transform_rejects_bad_size() -> None:
    with pytest.raises(ValueError):
        eval_transform((0, 32))


def test_train_transform_shape_range_and_randomness() -> None:
    torch.manual_seed(0)
    transform = train_transform((48, 24))
    image = _gradient_image()
    outputs = [transform(image) for _ in range(8)]
    for x in outputs:
        assert x.shape == (3, 48, 24) and x.dtype == torch.float32
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert any(not torch.equal(outputs[0], x) for x in outputs[1:])


def test_flip_only_mirrors_the_eval_image() -> None:
    image = _gradient_image()
    x = train_transform((48, 24), AugmentConfig(flip_p=1.0, pad=0, erase_p=0.0))(image)
    assert torch.equal(x, eval_transform((48, 24))(image).flip(-1))
    x = train_transform((48, 24), AugmentConfig(flip_p=0.0, pad=0, erase_p=0.0))(image)
    assert torch.equal(x, eval_transform((48, 24))(image))


def test_pad_crop_is_a_window_of_the_padded_image() -> None:
    x = torch.rand(3, 20, 10)
    generator = torch.Generator().manual_seed(1)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    seen_shifts = set()
    for _ in range(30):
        y = random_pad_crop(x, 4, generator)
        assert y.shape == x.shape
        matches = [(t, s) for t in range(9) for s in range(9) if torch.equal(padded[:, t:t + 20, s:s + 10], y)]
        assert matches
        seen_shifts.add(matches[0])
    assert len(seen_shifts) > 5
    assert torch.equal(random_pad_crop(x, 0), x)


def test_random_erase_fills_one_rectangle_with_unit_noise() -> None:
    x = torch.full((3, 64, 32), 2.0)  # out-of-range marker: erased pixels must land in [0, 1]
    generator = torch.Generator().manual_seed(3)
    for _ in range(20):
        y = random_erase(x, (0.02, 0.4), (0.3, 3.33), generator)
        erased = (y != 2.0).all(dim=0)
        rows, cols = torch.nonzero(erased, as_tuple=True)
        assert len(rows) > 0
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert int(box) == len(rows)  # a filled rectangle
        assert 0.015 * 64 * 32 <= len(rows) <= 0.45 * 64 * 32
        values = y[:, erased]
        assert float(values.min()) >= 0.0 and float(values.max()) <= 1.0
        assert torch.equal(y[:, ~erased], x[:, ~erased])
    assert torch.equal(x, torch.full((3, 64, 32), 2.0))  # input left untouched


@pytest.mark.parametrize(
    "kwargs",
    [{"flip_p": 1.5}, {"erase_p": -0.1}, {"pad": -1}, {"erase_area": (0.5, 0.2)}, {"erase_ratio": (0.0, 1.0)}],
)
def test_augment_config_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        AugmentConfig(**kwargs)

"""decode_crop on real encoded bytes: formats, EXIF orientation, and every kind of bad file."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from service.core.errors import ImageError
from service.inference.imaging import ImageLimits, _draft, decode_crop
from tests.support.images import encode, player_crop

LIMITS = ImageLimits(max_file_bytes=1_000_000, max_pixels=1_000_000, max_side=4000, min_side=4)
SIZE = (64, 32)  # (H, W)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_decodes_each_allowed_format_to_model_input(fmt: str) -> None:
    data = encode(player_crop(3), fmt)
    crop = decode_crop(data, 0, "a", SIZE, LIMITS)
    assert crop.pixels.shape == (3, 64, 32)
    assert crop.pixels.dtype == np.uint8
    assert crop.original_size == (64, 128)
    assert crop.image_format == fmt
    # The shirt colour survives decoding: the crop is not blank.
    assert crop.pixels.std() > 10


def test_pixels_match_a_plain_pillow_bilinear_resize() -> None:
    image = player_crop(5)
    crop = decode_crop(encode(image, "PNG"), 0, None, SIZE, LIMITS)
    expected = np.asarray(image.resize((32, 64), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    np.testing.assert_array_equal(crop.pixels, expected)


def test_exif_orientation_is_applied() -> None:
    # Stored landscape 128x64 with orientation 6 (rotate 90 CW to display) -> displayed as portrait 64x128.
    stored = player_crop(1).transpose(Image.Transpose.ROTATE_90)
    assert stored.size == (128, 64)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, "JPEG", exif=exif.tobytes(), quality=95)
    crop = decode_crop(data, 0, "rot.jpg", SIZE, LIMITS)
    upright = decode_crop(encode(player_crop(1), "JPEG", quality=95), 0, "up.jpg", SIZE, LIMITS)
    # After the EXIF rotation the crop should look like the upright one (JPEG noise aside).
    diff = np.abs(crop.pixels.astype(int) - upright.pixels.astype(int)).mean()
    unrotated = np.asarray(stored.resize((32, 64), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    assert diff < 12
    assert diff < np.abs(unrotated.astype(int) - upright.pixels.astype(int)).mean()


def _full_decode(data: bytes) -> np.ndarray:
    """The reference: full-size decode, EXIF transpose, bilinear resize to SIZE, as (3, H, W)."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    return np.asarray(image.resize((SIZE[1], SIZE[0]), Image.Resampling.BILINEAR)).transpose(2, 0, 1)


def test_near_input_size_jpegs_decode_in_full() -> None:
    """Below DRAFT_MIN_SCALE x the input the JPEG decodes at full size: pixels exactly as before."""
    data = encode(player_crop(4, size=(48, 96)), "JPEG", quality=95)  # 1.5x the 32x64 input
    opened = Image.open(io.BytesIO(data))
    _draft(opened, SIZE)
    opened.load()
    assert opened.size == (48, 96)
    np.testing.assert_array_equal(decode_crop(data, 0, None, SIZE, LIMITS).pixels, _full_decode(data))


@pytest.mark.parametrize("orientation", [1, 6])
def test_large_jpegs_decode_at_reduced_size_without_changing_the_crop(orientation: int) -> None:
    """A crop 8x the input decodes at 1/8 scale in the DCT (never below the input), and looks the same."""
    upright = player_crop(6, size=(256, 512))
    stored = upright if orientation == 1 else upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(stored, "JPEG", exif=exif.tobytes(), quality=95)
    opened = Image.open(io.BytesIO(data))
    _draft(opened, SIZE)
    opened.load()
    assert opened.size == ((32, 64) if orientation == 1 else (64, 32))  # the stored orientation, at 1/8
    pixels = decode_crop(data, 0, None, SIZE, LIMITS).pixels
    reference = _full_decode(data)
    assert np.abs(pixels.astype(int) - reference.astype(int)).mean() < 4


def test_rgba_and_grayscale_become_rgb() -> None:
    rgba = player_crop(2).convert("RGBA")
    gray = player_crop(2).convert("L")
    assert decode_crop(encode(rgba, "PNG"), 0, None, SIZE, LIMITS).pixels.shape == (3, 64, 32)
    g = decode_crop(encode(gray, "PNG"), 0, None, SIZE, LIMITS).pixels
    np.testing.assert_array_equal(g[0], g[1])


def test_sha256_is_of_the_raw_bytes() -> None:
    import hashlib

    data = encode(player_crop(0), "PNG")
    assert decode_crop(data, 0, None, SIZE, LIMITS).sha256 == hashlib.sha256(data).hexdigest()


def _error(data: bytes, limits: ImageLimits = LIMITS, index: int = 2, name: str = "bad.png") -> ImageError:
    with pytest.raises(ImageError) as info:
        decode_crop(data, index, name, SIZE, limits)
    assert f"file #{index}" in info.value.detail and name in info.value.detail
    return info.value


def test_empty_file() -> None:
    err = _error(b"")
    assert (err.status_code, err.code) == (400, "empty_file")


def test_not_an_image() -> None:
    err = _error(b"%PDF-1.4 definitely not a picture" * 10)
    assert (err.status_code, err.code) == (415, "unsupported_media_type")


def test_gif_is_refused() -> None:
    err = _error(encode(player_crop(0), "GIF"))
    assert (err.status_code, err.code) == (415, "unsupported_media_type")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(fmt: str) -> None:
    data = encode(player_crop(4), fmt)
    err = _error(data[: len(data) // 2])
    assert (err.status_code, err.code) == (400, "invalid_image")


def test_decompression_bomb_is_refused_from_the_header() -> None:
    bomb = encode(Image.new("L", (3000, 3000)), "PNG")
    assert len(bomb) < 100_000  # tiny file, 9 Mpx once decoded
    err = _error(bomb)
    assert (err.status_code, err.code) == (413, "image_too_large")


def test_huge_side_is_refused() -> None:
    err = _error(encode(Image.new("RGB", (5000, 8)), "PNG"))
    assert (err.status_code, err.code) == (413, "image_too_large")


def test_tiny_image_is_refused() -> None:
    err = _error(encode(Image.new("RGB", (2, 50)), "PNG"))
    assert (err.status_code, err.code) == (400, "image_too_small")


def test_file_over_the_byte_limit() -> None:
    small = ImageLimits(max_file_bytes=100, max_pixels=10**6, max_side=4000, min_side=4)
    err = _error(encode(player_crop(0), "PNG"), small)
    assert (err.status_code, err.code) == (413, "file_too_large")

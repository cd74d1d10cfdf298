"""Upload bytes -> validated, EXIF-oriented RGB crop resized to the model input, as a uint8 (3, H, W) array.

Runs in a worker thread (never on the event loop). Everything that can go wrong with a client's file is turned
into an ImageError naming the file, so the route can answer 4xx and store nothing.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.core.errors import ImageError

logger = logging.getLogger(__name__)

ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP")
MEDIA_TYPES: dict[str, str] = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}


@dataclass(frozen=True)
class ImageLimits:
    """Per-image limits; pixels and sides are checked from the header, before any pixel is decoded."""

    max_file_bytes: int
    max_pixels: int
    max_side: int
    min_side: int


@dataclass(frozen=True)
class DecodedCrop:
    """A crop ready for the model: pixels (3, H, W) uint8 RGB at the model's input size."""

    pixels: np.ndarray
    sha256: str
    original_size: tuple[int, int]  # (width, height) before resizing
    image_format: str


def decode_crop(
    data: bytes, index: int, filename: str | None, input_size: tuple[int, int], limits: ImageLimits
) -> DecodedCrop:
    """Decode, orient and resize one upload. input_size is (H, W). Raises ImageError on any bad file."""
    if not data:
        raise ImageError(400, "empty_file", index, filename, "the file is empty (0 bytes)")
    if len(data) > limits.max_file_bytes:
        raise ImageError(
            413,
            "file_too_large",
            index,
            filename,
            f"{len(data)} bytes exceeds the per-file limit of {limits.max_file_bytes} bytes",
        )
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x MAX_IMAGE_PIXELS; our own check below is the real limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
    except Image.DecompressionBombError as exc:
        raise ImageError(413, "image_too_large", index, filename, f"decompression bomb refused: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(
            415,
            "unsupported_media_type",
            index,
            filename,
            "not a JPEG, PNG or WebP image",
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(400, "invalid_image", index, filename, f"cannot read the image header: {exc}") from exc

    height_out, width_out = input_size
    with image:
        width, height = image.size
        _check_dimensions(width, height, index, filename, limits)
        try:
            _draft(image, input_size)
            image.load()
            # Transposing after load so a broken EXIF block surfaces as a decode error, not a 500. In place: no copy
            # of an image that needs no transposing (most crops).
            ImageOps.exif_transpose(image, in_place=True)
            rgb = to_rgb(image)
            # PIL bilinear (with its antialiasing support) is what the training eval transform uses.
            resized = rgb.resize((width_out, height_out), Image.Resampling.BILINEAR)
        except Image.DecompressionBombError as exc:
            raise ImageError(413, "image_too_large", index, filename, f"decompression bomb refused: {exc}") from exc
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageError(
                400, "invalid_image", index, filename, f"the image data is truncated or corrupt: {exc}"
            ) from exc
        image_format = str(image.format)

    pixels = np.ascontiguousarray(np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1))
    return DecodedCrop(
        pixels=pixels,
        sha256=hashlib.sha256(data).hexdigest(),
        original_size=(width, height),
        image_format=image_format,
    )


def stored_media_type(data: bytes) -> str | None:
    """The image/* type of bytes accepted by decode_crop, from Pillow's reading of their header (no pixels are
    decoded); None when they are none of ALLOWED_FORMATS. Bytes past the image (a polyglot's tail) do not count."""
    try:
        with Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS)) as image:
            return MEDIA_TYPES.get(str(image.format))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def to_rgb(image: Image.Image) -> Image.Image:
    """The image in 8-bit RGB (itself when it already is). 16-bit grey (PNG's "I;16" modes, or "I" holding
    0..65535) is scaled to 8 bits first: Pillow's own conversion clips it at 255, which turns an ordinary 16-bit grey
    crop all white."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16") or image.mode == "I":
        wide = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        image = Image.fromarray((wide >> 8).astype(np.uint8))
    return image.convert("RGB")


# JPEG orientations (EXIF 0x0112) that swap width and height once applied.
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
DRAFT_MIN_SCALE = 2


def _draft(image: Image.Image, input_size: tuple[int, int]) -> None:
    """Let the JPEG decoder scale a large crop down in the DCT (1/2, 1/4, 1/8) while decoding.

    Only for crops at least DRAFT_MIN_SCALE times the model input on both sides, and never below the input: the
    decoder then skips most of the pixels, and the bilinear resize that follows still only shrinks (with its
    antialiasing). Crops near the input size (the usual player crop) decode in full as before.
    """
    if image.format != "JPEG":
        return
    height_out, width_out = input_size
    orientation = image.getexif().get(0x0112, 1)
    # draft() works on the stored orientation: ask for the transposed size when EXIF rotates the crop.
    want = (height_out, width_out) if orientation in _SWAPPING_ORIENTATIONS else (width_out, height_out)
    width, height = image.size
    if width >= DRAFT_MIN_SCALE * want[0] and height >= DRAFT_MIN_SCALE * want[1]:
        image.draft(None, want)


def _check_dimensions(width: int, height: int, index: int, filename: str | None, limits: ImageLimits) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(400, "invalid_image", index, filename, f"the image has zero size ({width}x{height})")
    if width * height > limits.max_pixels:
        raise ImageError(
            413,
            "image_too_large",
            index,
            filename,
            f"{width}x{height} = {width * height} pixels exceeds the limit of {limits.max_pixels}",
        )
    if max(width, height) > limits.max_side:
        raise ImageError(
            413,
            "image_too_large",
            index,
            filename,
            f"{width}x{height}: the longer side exceeds {limits.max_side} px",
        )
    if min(width, height) < limits.min_side:
        raise ImageError(
            400,
            "image_too_small",
            index,
            filename,
            f"{width}x{height}: the shorter side is below {limits.min_side} px",
        )

"""Synthetic player crops as real encoded image bytes (PNG/JPEG/WebP made with Pillow).

Each player id gets its own shirt/shorts colours and shirt pattern on a pitch-green background, so a re-id
model (even an untrained one) maps crops of one player close together and different players apart.
"""

from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

_PALETTE = [
    (220, 20, 60),
    (30, 144, 255),
    (255, 215, 0),
    (255, 255, 255),
    (20, 20, 20),
    (50, 205, 50),
    (148, 0, 211),
    (255, 140, 0),
    (0, 206, 209),
    (139, 69, 19),
    (255, 105, 180),
    (128, 128, 128),
]


def player_crop(player: int, variant: int = 0, size: tuple[int, int] = (64, 128)) -> Image.Image:
    """RGB crop (width, height = size) of synthetic player ``player``; ``variant`` adds jitter and noise."""
    width, height = size
    rng = np.random.default_rng(player * 1000 + variant)
    shirt = _PALETTE[player % len(_PALETTE)]
    shorts = _PALETTE[(player * 5 + 3) % len(_PALETTE)]
    stripe = _PALETTE[(player * 7 + 1) % len(_PALETTE)]
    image = Image.new("RGB", size, (40, 120 + (player * 13) % 60, 40))
    draw = ImageDraw.Draw(image)
    dx = int(rng.integers(-2, 3)) if variant else 0
    head = (width // 2 + dx, height // 8)
    draw.ellipse(
        [head[0] - width // 8, head[1] - height // 16, head[0] + width // 8, head[1] + height // 16],
        fill=(224, 172, 105),
    )
    top, waist, knee = height // 5, height // 2, int(height * 0.68)
    draw.rectangle([width // 4 + dx, top, 3 * width // 4 + dx, waist], fill=shirt)
    pattern = player % 3
    if pattern == 1:  # vertical stripes
        for x in range(width // 4 + dx, 3 * width // 4 + dx, 6):
            draw.rectangle([x, top, x + 2, waist], fill=stripe)
    elif pattern == 2:  # horizontal hoops
        for y in range(top, waist, 8):
            draw.rectangle([width // 4 + dx, y, 3 * width // 4 + dx, y + 3], fill=stripe)
    draw.rectangle([width // 4 + dx, waist, 3 * width // 4 + dx, knee], fill=shorts)
    draw.rectangle([width // 3 + dx, knee, width // 2 - 2 + dx, height - 4], fill=(230, 230, 230))
    draw.rectangle([width // 2 + 2 + dx, knee, 2 * width // 3 + dx, height - 4], fill=(230, 230, 230))
    pixels = np.asarray(image, dtype=np.int16)
    if variant:
        pixels = pixels + rng.integers(-12, 13, size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def encode(image: Image.Image, fmt: str = "PNG", **save_kwargs: object) -> bytes:
    """Encode to PNG/JPEG/WEBP bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_kwargs)  # type: ignore[arg-type]
    return buffer.getvalue()


def player_png(player: int, variant: int = 0) -> bytes:
    return encode(player_crop(player, variant), "PNG")


def player_jpeg(player: int, variant: int = 0, quality: int = 95) -> bytes:
    return encode(player_crop(player, variant), "JPEG", quality=quality)


def noise_image(seed: int, size: tuple[int, int] = (64, 128)) -> Image.Image:
    """Uniform colour noise: looks like no player at all."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))


def files_field(*payloads: bytes, names: list[str] | None = None) -> list[tuple[str, tuple[str, bytes, str]]]:
    """Multipart `files` parts (httpx/TestClient ``files=``), one per payload, in order."""
    names = names or [f"crop{i}.png" for i in range(len(payloads))]
    pairs = zip(names, payloads, strict=True)
    return [("files", (name, data, "application/octet-stream")) for name, data in pairs]

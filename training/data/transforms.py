"""Image loading and augmentations for re-id crops.

Both pipelines end in a float tensor in [0, 1] of shape (3, H, W): the network normalises with the
mean/std stored in its checkpoint, so no normalisation happens here. The evaluation pipeline is the
exact preprocessing the service applies (PIL bilinear resize of the RGB image, then scaling to [0, 1]);
``load_rgb`` and ``eval_transform`` are meant to be reused there.

    >>> from training.data.transforms import load_rgb, eval_transform
    >>> x = eval_transform((256, 128))(load_rgb("crop.png"))  # (3, 256, 128), float32 in [0, 1]
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

logger = logging.getLogger(__name__)

ImageTransform = Callable[[Image.Image], torch.Tensor]


def load_rgb(source: str | Path | bytes) -> Image.Image:
    """Decode an image file (path or raw bytes) into a fully loaded, upright 8-bit RGB PIL image.

    The EXIF orientation tag is applied (as the service's decoder does), so a phone JPEG stored sideways is
    seen upright. Palette, grayscale, 16-bit and alpha images are converted to RGB; alpha is dropped, as the
    network only ever sees three channels.
    """
    stream: io.BytesIO | Path = io.BytesIO(source) if isinstance(source, bytes) else Path(source)
    with Image.open(stream) as image:
        image.load()
        # exif_transpose returns None only when called with in_place=True; convert() copies, so the file
        # handle can be closed on return.
        return (ImageOps.exif_transpose(image) or image).convert("RGB")


def pil_to_tensor01(image: Image.Image) -> torch.Tensor:
    """RGB PIL image (W x H) -> float32 tensor (3, H, W) in [0, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).to(torch.float32).div_(255.0)


def resize_bilinear(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize to ``size`` = (H, W) with PIL's bilinear filter (note PIL takes (W, H))."""
    height, width = size
    if image.size == (width, height):
        return image
    return image.resize((width, height), Image.Resampling.BILINEAR)


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    height, width = int(size[0]), int(size[1])
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive (H, W), got {size}")
    return height, width


class EvalTransform:
    """PIL image -> (3, H, W) float tensor in [0, 1]: bilinear resize to (H, W), nothing else."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = _check_size(size)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return pil_to_tensor01(resize_bilinear(image.convert("RGB"), self.size))

    def __repr__(self) -> str:
        return f"EvalTransform(size={self.size})"


def eval_transform(size: tuple[int, int]) -> EvalTransform:
    """The deterministic preprocessing shared by evaluation and the service: (H, W) -> callable."""
    return EvalTransform(size)


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentations (defaults follow the common re-id "bag of tricks" recipe).

    flip_p: probability of a horizontal flip.
    pad: pixels of zero padding on each side before a random crop back to (H, W); 0 disables.
    erase_p: probability of random erasing; the erased rectangle covers ``erase_area`` of the image
        (fraction range) with an aspect ratio in ``erase_ratio`` and is filled with uniform noise in [0, 1].
    """

    flip_p: float = 0.5
    pad: int = 10
    erase_p: float = 0.5
    erase_area: tuple[float, float] = (0.02, 0.4)
    erase_ratio: tuple[float, float] = (0.3, 3.33)

    def __post_init__(self) -> None:
        for name in ("flip_p", "erase_p"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
        if self.pad < 0:
            raise ValueError(f"pad must be >= 0, got {self.pad}")
        low, high = self.erase_area
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"erase_area must satisfy 0 < low <= high <= 1, got {self.erase_area}")
        rlow, rhigh = self.erase_ratio
        if not 0.0 < rlow <= rhigh:
            raise ValueError(f"erase_ratio must satisfy 0 < low <= high, got {self.erase_ratio}")


def random_pad_crop(x: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(3, H, W) -> (3, H, W): zero-pad by ``pad`` on every side, then crop a random H x W window."""
    if pad == 0:
        return x
    _, height, width = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), value=0.0)
    top = int(torch.randint(0, 2 * pad + 1, (1,), generator=generator))
    left = int(torch.randint(0, 2 * pad + 1, (1,), generator=generator))
    return padded[:, top : top + height, left : left + width].contiguous()


def random_erase(
    x: torch.Tensor,
    area: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
    attempts: int = 20,
) -> torch.Tensor:
    """(3, H, W) -> (3, H, W): fill one random rectangle with uniform noise in [0, 1].

    Rectangles that do not fit are re-drawn up to ``attempts`` times; the image is returned
    unchanged if none fits (possible only for extreme aspect ratios on tiny images).
    """
    channels, height, width = x.shape
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        draws = torch.rand(2, generator=generator).tolist()
        target_area = height * width * (area[0] + (area[1] - area[0]) * draws[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * draws[1])
        erase_h = round(math.sqrt(target_area * aspect))
        erase_w = round(math.sqrt(target_area / aspect))
        if 0 < erase_h < height and 0 < erase_w < width:
            top = int(torch.randint(0, height - erase_h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - erase_w + 1, (1,), generator=generator))
            out = x.clone()
            out[:, top : top + erase_h, left : left + erase_w] = torch.rand(
                channels, erase_h, erase_w, generator=generator, dtype=x.dtype
            )
            return out
    return x


class TrainTransform:
    """PIL image -> (3, H, W) float tensor in [0, 1] with random flip, pad-crop and erasing.

    The resize is the same bilinear PIL resize as :class:`EvalTransform`, so train and test crops
    share their geometry. Randomness comes from torch's global generator unless one is given, which
    keeps DataLoader worker seeding in charge of reproducibility.
    """

    def __init__(
        self,
        size: tuple[int, int],
        config: AugmentConfig | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.size = _check_size(size)
        self.config = config or AugmentConfig()
        self.generator = generator

    def __call__(self, image: Image.Image) -> torch.Tensor:
        cfg = self.config
        x = pil_to_tensor01(resize_bilinear(image.convert("RGB"), self.size))
        if cfg.flip_p > 0 and float(torch.rand(1, generator=self.generator)) < cfg.flip_p:
            x = x.flip(-1)
        x = random_pad_crop(x, cfg.pad, self.generator)
        if cfg.erase_p > 0 and float(torch.rand(1, generator=self.generator)) < cfg.erase_p:
            x = random_erase(x, cfg.erase_area, cfg.erase_ratio, self.generator)
        return x

    def __repr__(self) -> str:
        return f"TrainTransform(size={self.size}, config={self.config})"


def train_transform(size: tuple[int, int], config: AugmentConfig | None = None) -> TrainTransform:
    """Training augmentation pipeline for crops resized to ``size`` = (H, W)."""
    return TrainTransform(size, config)

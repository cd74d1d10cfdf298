"""Serving and training see the same crop: one PNG, one JPEG and one EXIF-rotated JPEG file each give the same
embedding through the service path (service.inference.imaging.decode_crop + service.inference.embedder.Embedder)
and through the training path (training.data.readers.ReidImageDataset's loader + eval_transform, in
training.evaluation.evaluate.extract_embeddings).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model import load_checkpoint
from service.inference.embedder import Embedder
from service.inference.imaging import ImageLimits, decode_crop
from tests.support.images import encode, player_crop
from training.data.readers import Sample
from training.evaluation.evaluate import extract_embeddings

LIMITS = ImageLimits(max_file_bytes=10_000_000, max_pixels=10_000_000, max_side=4096, min_side=8)
EXIF_ORIENTATION = 0x0112
# Orientation 6: "rotate 90 degrees clockwise to view". The stored pixels are the upright image turned 90
# degrees counter-clockwise, so a reader that honours the tag shows the upright crop, one that ignores it a
# sideways one.
ROTATE_CW_TO_VIEW = 6


def _upright() -> Image.Image:
    # 72x150 (w x h): not the model's input size (64x32 for the tiny checkpoint), so both paths resize.
    return player_crop(3, variant=1, size=(72, 150))


def _exif_rotated_jpeg(upright: Image.Image) -> bytes:
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # counter-clockwise; (150 x 72) stored
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = ROTATE_CW_TO_VIEW
    return encode(stored, "JPEG", quality=95, exif=exif.tobytes())


FILES = {
    "crop.png": lambda: encode(_upright(), "PNG"),
    "crop.jpg": lambda: encode(_upright(), "JPEG", quality=95),
    "rotated.jpg": lambda: _exif_rotated_jpeg(_upright()),
}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def embeddings(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[np.ndarray, ...]]:
    """file name -> (service embedding (D,), training embedding (D,))."""
    folder = tmp_path_factory.mktemp("parity")
    paths = {}
    for name, make in FILES.items():
        paths[name] = folder / name
        paths[name].write_bytes(make())

    embedder = Embedder.from_checkpoint(tiny_checkpoint, "cpu")
    served = {
        name: embedder.embed_batch(decode_crop(path.read_bytes(), 0, name, embedder.input_size, LIMITS).pixels[None])[0]
        for name, path in paths.items()
    }

    model, _ = load_checkpoint(tiny_checkpoint, device="cpu")
    samples = [Sample(path=path, pid=0, camid=0, group="") for path in paths.values()]
    trained = extract_embeddings(model, samples, torch.device("cpu"), batch_size=len(samples)).feats
    return {name: (served[name], trained[i]) for i, name in enumerate(paths)}


@pytest.mark.parametrize("name", list(FILES))
def test_service_and_training_embed_a_file_alike(embeddings: dict[str, tuple[np.ndarray, ...]], name: str) -> None:
    served, trained = embeddings[name]
    assert _cosine(served, trained) >= 0.9999


def test_exif_rotated_jpeg_is_seen_upright(embeddings: dict[str, tuple[np.ndarray, ...]]) -> None:
    """Both paths turn the sideways-stored JPEG upright: it embeds like the upright JPEG (measured 0.999998 with
    the tiny checkpoint; read sideways, 0.995)."""
    upright, _ = embeddings["crop.jpg"]
    for rotated in embeddings["rotated.jpg"]:
        assert _cosine(rotated, upright) >= 0.9999

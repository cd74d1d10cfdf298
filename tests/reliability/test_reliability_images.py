"""A corpus of awkward and malformed images through /gallery and /query of a real server.

Decision per kind (documented here, asserted below):
  refused 4xx, gallery unchanged   truncated PNG/JPEG (400 invalid_image), decompression bomb declaring
                                   30000x30000 in its header (413 image_too_large, refused before decoding),
                                   huge dimensions 20000x8 (413 image_too_large), animated GIF (415: GIF is not
                                   an accepted format)
  accepted 2xx (converted to RGB)  CMYK JPEG, 16-bit PNG ("I;16"; Pillow clips values above 255), animated WebP
                                   (first frame), palette PNG, grayscale PNG, RGBA PNG, EXIF-rotated JPEG
                                   (orientation 6: its embedding equals the pre-rotated image's)
Never a 5xx; the process keeps serving.
"""

from __future__ import annotations

import io
import logging
import struct
import zlib
from collections.abc import Callable

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.reliability.conftest import ServerFactory, report
from tests.support.images import encode, player_crop, player_png

logger = logging.getLogger(__name__)

pytestmark = pytest.mark.slow


def _crop(player: int = 5) -> Image.Image:
    return player_crop(player, 1)


def truncated_png() -> bytes:
    data = player_png(6)
    return data[: len(data) * 2 // 3]


def truncated_jpeg() -> bytes:
    data = encode(_crop(), "JPEG", quality=95)
    return data[: len(data) // 2]


def png_with_header_size(width: int, height: int) -> bytes:
    """A small real PNG whose IHDR claims width x height (CRC fixed up): a decompression bomb's header."""
    data = bytearray(player_png(7))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def huge_dimensions() -> bytes:
    return encode(Image.new("RGB", (20000, 8), (10, 200, 10)), "PNG")


def cmyk_jpeg() -> bytes:
    # Under twice the tiny model's input (64x32): decoded in full, not scaled down in the DCT (imaging._draft).
    return encode(_crop().resize((60, 120)).convert("CMYK"), "JPEG", quality=95)


def png_16bit() -> bytes:
    gray = np.asarray(_crop().convert("L"), dtype=np.uint16) * 257
    return encode(Image.fromarray(gray.astype(np.uint16)), "PNG")


def animated(fmt: str) -> bytes:
    frames = [_crop(p) for p in (1, 2, 3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def exif_rotated_pair() -> tuple[bytes, bytes]:
    """(JPEG whose EXIF says orientation 6, PNG of exactly the pixels a viewer shows for it)."""
    # Stored sideways, 120 wide and 60 high: under twice the tiny model's input, so decoded in full (no DCT draft).
    image = player_crop(8, 0, size=(128, 64)).resize((120, 60))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    jpeg = encode(image, "JPEG", quality=95, exif=exif.tobytes())
    stored = Image.open(io.BytesIO(jpeg))
    stored.load()
    upright = stored.transpose(Image.Transpose.ROTATE_270)
    assert upright.size == (60, 120)
    return jpeg, encode(upright.convert("RGB"), "PNG")


REFUSED: dict[str, tuple[Callable[[], bytes], int, str]] = {
    "truncated_png": (truncated_png, 400, "invalid_image"),
    "truncated_jpeg": (truncated_jpeg, 400, "invalid_image"),
    "bomb_30000x30000": (lambda: png_with_header_size(30000, 30000), 413, "image_too_large"),
    "huge_20000x8": (huge_dimensions, 413, "image_too_large"),
    "animated_gif": (lambda: animated("GIF"), 415, "unsupported_media_type"),
}
ACCEPTED: dict[str, Callable[[], bytes]] = {
    "cmyk_jpeg": cmyk_jpeg,
    "png_16bit": png_16bit,
    "animated_webp": lambda: animated("WEBP"),
    "palette_png": lambda: encode(_crop().convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
    "grayscale_png": lambda: encode(_crop().convert("L"), "PNG"),
    "rgba_png": lambda: encode(_crop().convert("RGBA"), "PNG"),
    "exif_rotated_jpeg": lambda: exif_rotated_pair()[0],
}


def _decoded_rgb(payload: bytes) -> Image.Image:
    """What a viewer shows for an 8-bit file (first frame), in RGB: Pillow's decoder as the reference."""
    with Image.open(io.BytesIO(payload)) as image:
        return image.convert("RGB")


# The RGB picture each awkward upload must be embedded as. Given by how the test made it (the 16-bit grey PNG is
# the 8-bit grey crop times 257; the RGBA one is opaque), or by Pillow's decoder for palette and lossy frames.
EXPECTED_RGB: dict[str, Callable[[bytes], Image.Image]] = {
    "cmyk_jpeg": _decoded_rgb,
    "png_16bit": lambda _: _crop().convert("L").convert("RGB"),
    "animated_webp": _decoded_rgb,
    "palette_png": _decoded_rgb,
    "grayscale_png": lambda _: _crop().convert("L").convert("RGB"),
    "rgba_png": lambda _: _crop(),
    "exif_rotated_jpeg": lambda _: Image.open(io.BytesIO(exif_rotated_pair()[1])).convert("RGB"),
}


def gallery_total(client: httpx.Client) -> int:
    return int(client.get("/gallery").json()["total"])


def test_malformed_images_get_4xx_and_awkward_ones_are_accepted(make_server: ServerFactory) -> None:
    server = make_server(REID_MAX_IMAGE_PIXELS="40000000", REID_MAX_IMAGE_SIDE="16384")
    outcomes: dict[str, tuple[int, int]] = {}
    with server.client() as client:
        base = client.post(
            "/gallery",
            files=[("files", ("base.png", player_png(1), "image/png"))],
            data={"collection": "img", "labels": ["base"]},
        )
        assert base.status_code == 201
        for kind, (make, status, code) in REFUSED.items():
            payload = make()
            before = gallery_total(client)
            files = [
                ("files", ("good.png", player_png(2), "image/png")),
                ("files", (f"{kind}.bin", payload, "image/png")),
            ]
            added = client.post("/gallery", files=files, data={"collection": "img", "labels": ["good", kind]})
            asked = client.post("/query", files=files, data={"collection": "img"})
            for response in (added, asked):
                assert response.status_code == status, (kind, response.status_code, response.text)
                body = response.json()
                assert body["error"] == code and "file #1" in body["detail"], (kind, body)
            assert gallery_total(client) == before, f"{kind}: a refused request changed the gallery"
            outcomes[kind] = (added.status_code, asked.status_code)
        for kind, make in ACCEPTED.items():
            payload = make()
            files = [("files", (f"{kind}.img", payload, "application/octet-stream"))]
            added = client.post("/gallery", files=files, data={"collection": "img", "labels": [kind]})
            assert added.status_code == 201, (kind, added.text)
            # Converted to the right RGB picture: it embeds exactly as a plain RGB PNG of that picture does (a
            # self-match of the same bytes could not tell a wrong conversion from a right one).
            reference = encode(EXPECTED_RGB[kind](payload), "PNG")
            registered = client.post(
                "/gallery",
                files=[("files", ("reference.png", reference, "image/png"))],
                data={"collection": f"ref-{kind}", "labels": ["reference"]},
            )
            assert registered.status_code == 201, (kind, registered.text)
            asked = client.post("/query", files=files, data={"collection": f"ref-{kind}", "top_k": 1})
            assert asked.status_code == 200, (kind, asked.text)
            top = asked.json()["results"][0]["matches"][0]
            assert top["label"] == "reference" and top["score"] == pytest.approx(1.0, abs=1e-5), (kind, top)
            outcomes[kind] = (added.status_code, asked.status_code)
        assert client.get("/healthz").status_code == 200
    assert "Traceback" not in server.logs()
    report("image corpus", **{k: f"{g}/{q}" for k, (g, q) in outcomes.items()})


def test_exif_rotation_gives_the_embedding_of_the_upright_image(make_server: ServerFactory) -> None:
    jpeg, upright_png = exif_rotated_pair()
    server = make_server()
    with server.client() as client:
        added = client.post(
            "/gallery",
            files=[
                ("files", ("upright.png", upright_png, "image/png")),
                ("files", ("sideways.png", player_png(3), "image/png")),
            ],
            data={"collection": "exif", "labels": ["upright", "other"]},
        )
        assert added.status_code == 201
        asked = client.post("/query", files=[("files", ("rot.jpg", jpeg, "image/jpeg"))], data={"collection": "exif"})
    top = asked.json()["results"][0]["matches"][0]
    assert top["label"] == "upright" and top["score"] == pytest.approx(1.0, abs=1e-5), top

"""Image reading shared by the image and video preprocessors: formats, bomb guard, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmcore.imaging import resize_to_tensor, to_pil


def test_every_input_form_gives_the_same_rgb_image(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(arr).save(path)
    forms = [arr, Image.fromarray(arr), path, str(path), torch.from_numpy(arr).permute(2, 0, 1)]
    for form in forms:
        assert np.array_equal(np.asarray(to_pil(form, 10_000)), arr)
    gray = to_pil(arr[:, :, 0], 10_000)
    assert np.array_equal(np.asarray(gray)[:, :, 2], arr[:, :, 0])


def test_decompression_bomb_refused_from_the_header(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(path)
    with pytest.raises(ValueError, match=r"300x200 = 60000 pixels, over the limit of 50000"):
        to_pil(path, 50_000)
    with pytest.raises(ValueError, match="decompression-bomb guard"):
        to_pil(np.zeros((200, 300, 3), np.uint8), 50_000)
    assert to_pil(path, 60_000).size == (300, 200)


def test_bad_inputs_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no image file"):
        to_pil(tmp_path / "missing.png", 100)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read image"):
        to_pil(broken, 100)
    with pytest.raises(ValueError, match="empty"):
        to_pil(np.zeros((0, 4, 3), np.uint8), 100)
    with pytest.raises(TypeError, match="cannot read an image from int"):
        to_pil(3, 100)


def test_resize_crops_the_center_and_normalises() -> None:
    arr = np.zeros((10, 20, 3), np.uint8)
    arr[:, 5:15] = 255  # a white band in the middle of a wide image
    out = resize_to_tensor(Image.fromarray(arr), 10, center_crop=True,
                           mean=torch.full((3, 1, 1), 0.5), std=torch.full((3, 1, 1), 0.5))
    assert out.shape == (3, 10, 10)
    assert torch.allclose(out, torch.ones_like(out), atol=1e-6)  # only the band survives


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares ``width`` x ``height`` (no pixel data follows): the
    guards must refuse it from the header alone."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


@pytest.mark.parametrize(("width", "height", "message"), [
    (1, 20_000_000, r"1x20000000: a side over 100,000 pixels"),
    (80_000_000, 1, r"80000000x1: a side over 100,000 pixels"),
    (150_000, 1_000, r"150000x1000: a side over 100,000 pixels"),
    (1, 20_000, r"1x20000, an aspect ratio over 100:1"),
    (30_000, 200, r"30000x200, an aspect ratio over 100:1"),
])
def test_strips_and_giant_sides_are_refused_from_the_header(tmp_path: Path, width: int,
                                                            height: int, message: str) -> None:
    path = _png_header(tmp_path / "odd.png", width, height)
    with pytest.raises(ValueError, match=message):
        to_pil(path, 10**12)


def test_an_elongated_array_is_refused_before_any_resize() -> None:
    with pytest.raises(ValueError, match=r"aspect ratio over 100:1"):
        to_pil(np.zeros((1, 101, 3), np.uint8), 10_000)
    assert to_pil(np.zeros((1, 100, 3), np.uint8), 10_000).size == (100, 1)

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

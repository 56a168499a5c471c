"""Images (PIL, paths, arrays, tensors) -> resized, center-cropped, normalised pixels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pydantic import Field
from torch import Tensor

from mmcore.builder import BuildContext
from mmcore.registry import ComponentConfig

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ImagePreprocessConfig(ComponentConfig):
    size: int = Field(224, gt=0)
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    center_crop: bool = True
    #: images with more pixels than this are refused (decompression-bomb guard)
    max_pixels: int = Field(89_478_485, gt=0)


class ImagePreprocessor:
    """items -> (B, 3, size, size) float32: resize the short side (bicubic), center-crop,
    scale to [0, 1], normalise with mean/std."""

    def __init__(self, cfg: ImagePreprocessConfig) -> None:
        self.cfg = cfg
        self.mean = torch.tensor(cfg.mean).view(3, 1, 1)
        self.std = torch.tensor(cfg.std).view(3, 1, 1)

    @classmethod
    def from_config(cls, cfg: ImagePreprocessConfig, ctx: BuildContext) -> ImagePreprocessor:
        return cls(cfg)

    def __call__(self, items: Sequence[Any]) -> Tensor:
        if len(items) == 0:
            raise ValueError("no images given")
        return torch.stack([self.one(item) for item in items])

    def one(self, item: Any) -> Tensor:
        """One image -> (3, size, size)."""
        image = self._to_pil(item)
        size = self.cfg.size
        w, h = image.size
        if self.cfg.center_crop:
            scale = size / min(w, h)
            nw, nh = max(size, int(w * scale)), max(size, int(h * scale))  # as torchvision
            image = image.resize((nw, nh), Image.Resampling.BICUBIC)
            left, top = (nw - size) // 2, (nh - size) // 2
            image = image.crop((left, top, left + size, top + size))
        else:
            image = image.resize((size, size), Image.Resampling.BICUBIC)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (pixels - self.mean) / self.std

    def _check_size(self, w: int, h: int, what: str) -> None:
        if w * h > self.cfg.max_pixels:
            raise ValueError(f"{what} is {w}x{h} = {w * h} pixels, over the limit of "
                             f"{self.cfg.max_pixels} (decompression-bomb guard; raise max_pixels "
                             "if you trust it)")
        if w == 0 or h == 0:
            raise ValueError(f"{what} is empty ({w}x{h})")

    def _to_pil(self, item: Any) -> Image.Image:
        if isinstance(item, (str, Path)):
            return self._open(Path(item))
        if isinstance(item, Image.Image):
            self._check_size(*item.size, "image")
            return item.convert("RGB")
        if isinstance(item, Tensor):
            item = item.detach().cpu().numpy()
            if item.ndim == 3 and item.shape[0] in (1, 3):
                item = item.transpose(1, 2, 0)
        if isinstance(item, np.ndarray):
            return self._from_array(item)
        raise TypeError(f"cannot read an image from {type(item).__name__}; give a PIL image, a "
                        "path, an (H, W, C) array or a (C, H, W) tensor")

    def _open(self, path: Path) -> Image.Image:
        if not path.is_file():
            raise FileNotFoundError(f"no image file at {path}")
        try:
            with Image.open(path) as im:  # header only: size is known before decoding
                self._check_size(*im.size, str(path))
                return im.convert("RGB")
        except (OSError, Image.DecompressionBombError) as exc:
            raise ValueError(f"cannot read image {path}: {exc}") from None

    def _from_array(self, arr: np.ndarray) -> Image.Image:
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
            raise ValueError(f"image array must be (H, W), (H, W, 1|3|4); got {arr.shape}")
        self._check_size(arr.shape[1], arr.shape[0], "image array")
        if arr.dtype != np.uint8:
            arr = (np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)
        if arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
        return Image.fromarray(arr[:, :, :3])

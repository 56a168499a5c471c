"""Video clips (frame lists or (T, H, W, C) arrays) -> normalised (B, C, T, S, S) clips."""

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

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FramesConfig(ComponentConfig):
    size: int = Field(224, gt=0)
    num_frames: int = Field(16, gt=0)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    center_crop: bool = True
    #: frames with more pixels than this are refused (decompression-bomb guard)
    max_pixels: int = Field(89_478_485, gt=0)


def sample_indices(length: int, num_frames: int) -> list[int]:
    """``num_frames`` indices spread uniformly over ``length`` frames (the centre of each
    of ``num_frames`` equal segments); a shorter clip repeats its last frame."""
    if length <= 0:
        raise ValueError("the clip has no frames")
    if length < num_frames:
        return list(range(length)) + [length - 1] * (num_frames - length)
    return [int((i + 0.5) * length / num_frames) for i in range(num_frames)]


class FramesPreprocessor:
    """clips -> (B, 3, num_frames, size, size) float32.

    A clip is a sequence of frames (PIL images, image paths, (H, W[, C]) arrays or
    (C, H, W) tensors) or one (T, H, W, C) array/tensor. Frames are sampled uniformly in
    time, then each is resized on its short side (bicubic), center-cropped, scaled to
    [0, 1] and normalised with mean/std.
    """

    def __init__(self, cfg: FramesConfig) -> None:
        self.cfg = cfg
        self.mean = torch.tensor(cfg.mean).view(3, 1, 1)
        self.std = torch.tensor(cfg.std).view(3, 1, 1)

    @classmethod
    def from_config(cls, cfg: FramesConfig, ctx: BuildContext) -> FramesPreprocessor:
        return cls(cfg)

    def __call__(self, items: Sequence[Any]) -> Tensor:
        if len(items) == 0:
            raise ValueError("no video clips given")
        return torch.stack([self.clip(item) for item in items])

    def clip(self, item: Any) -> Tensor:
        """One clip -> (3, num_frames, size, size)."""
        frames = _frames(item)
        picked = [frames[i] for i in sample_indices(len(frames), self.cfg.num_frames)]
        return torch.stack([self.frame(f) for f in picked], dim=1)

    def frame(self, item: Any) -> Tensor:
        """One frame -> (3, size, size)."""
        image = self._to_pil(item)
        size = self.cfg.size
        w, h = image.size
        if self.cfg.center_crop:
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
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
                             f"{self.cfg.max_pixels} (decompression-bomb guard)")
        if w == 0 or h == 0:
            raise ValueError(f"{what} is empty ({w}x{h})")

    def _to_pil(self, item: Any) -> Image.Image:
        if isinstance(item, (str, Path)):
            return self._open(Path(item))
        if isinstance(item, Image.Image):
            self._check_size(*item.size, "frame")
            return item.convert("RGB")
        if isinstance(item, Tensor):
            item = item.detach().cpu().numpy()
            if item.ndim == 3 and item.shape[0] in (1, 3) and item.shape[2] not in (1, 3, 4):
                item = item.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
        if isinstance(item, np.ndarray):
            return self._from_array(item)
        raise TypeError(f"cannot read a frame from {type(item).__name__}; give a PIL image, "
                        "a path, an (H, W, C) array or a (C, H, W) tensor")

    def _open(self, path: Path) -> Image.Image:
        if not path.is_file():
            raise FileNotFoundError(f"no frame image at {path}")
        try:
            with Image.open(path) as im:
                self._check_size(*im.size, str(path))
                return im.convert("RGB")
        except (OSError, Image.DecompressionBombError) as exc:
            raise ValueError(f"cannot read frame {path}: {exc}") from None

    def _from_array(self, arr: np.ndarray) -> Image.Image:
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
            raise ValueError(f"a frame must be (H, W) or (H, W, 1|3|4); got {arr.shape}")
        self._check_size(arr.shape[1], arr.shape[0], "frame")
        if arr.dtype != np.uint8:
            arr = (np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)
        if arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
        return Image.fromarray(arr[:, :, :3])


def _frames(item: Any) -> Sequence[Any]:
    """A clip -> its frames: a (T, H, W, C) array/tensor is split along T."""
    if isinstance(item, Tensor):
        item = item.detach().cpu().numpy()
    if isinstance(item, np.ndarray):
        if item.ndim != 4:
            raise ValueError(f"a clip array must be (T, H, W, C), got shape {item.shape}")
        return list(item)
    if isinstance(item, (str, Path, Image.Image)) or not isinstance(item, Sequence):
        raise TypeError("a clip is a list of frames or a (T, H, W, C) array, not "
                        f"{type(item).__name__}")
    return item


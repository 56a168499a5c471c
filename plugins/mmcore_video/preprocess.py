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
from mmcore.imaging import PixelStd, resize_to_tensor, to_pil
from mmcore.registry import ComponentConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FramesConfig(ComponentConfig):
    size: int = Field(224, gt=0)
    num_frames: int = Field(16, gt=0)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[PixelStd, PixelStd, PixelStd] = IMAGENET_STD
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
        image = to_pil(item, self.cfg.max_pixels, "frame")
        return resize_to_tensor(image, self.cfg.size, center_crop=self.cfg.center_crop,
                                mean=self.mean, std=self.std)


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


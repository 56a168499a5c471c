"""Images (PIL, paths, arrays, tensors) -> resized, center-cropped, normalised pixels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from mmcore.builder import BuildContext
from mmcore.imaging import PixelStd, resize_to_tensor, to_pil
from mmcore.registry import ComponentConfig

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ImagePreprocessConfig(ComponentConfig):
    size: int = Field(224, gt=0)
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[PixelStd, PixelStd, PixelStd] = CLIP_STD
    center_crop: bool = True
    #: images with more pixels than this are refused (decompression-bomb guard)
    max_pixels: int = Field(89_478_485, gt=0)
    #: what the three channels hold: ``rgb``; ``grey`` (ITU-R 601 luma); or ``chroma``
    #: (max - min over R, G, B per pixel, divided by the image's largest), a colour-free
    #: view in which a saturated shape on a grey ground is a silhouette. The one-channel
    #: views are repeated three times (like torchvision's ``Grayscale(3)``), then normalised.
    channels: Literal["rgb", "grey", "chroma"] = "rgb"


class ImagePreprocessor:
    """items -> (B, 3, size, size) float32: resize the short side (bicubic), center-crop,
    scale to [0, 1], optionally turn into a grey or chroma view (``channels``), normalise
    with mean/std."""

    def __init__(self, cfg: ImagePreprocessConfig) -> None:
        self.cfg = cfg
        self.image_size = cfg.size  # the side of the square images emitted
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
        image = to_pil(item, self.cfg.max_pixels, "image")
        if self.cfg.channels == "rgb":
            return resize_to_tensor(image, self.cfg.size, center_crop=self.cfg.center_crop,
                                    mean=self.mean, std=self.std)
        pixels = resize_to_tensor(image, self.cfg.size, center_crop=self.cfg.center_crop,
                                  mean=torch.zeros(3, 1, 1), std=torch.ones(3, 1, 1))
        return (view(pixels, self.cfg.channels) - self.mean) / self.std


#: ITU-R BT.601 luma weights of R, G, B
LUMA = (0.299, 0.587, 0.114)


def view(pixels: Tensor, channels: str) -> Tensor:
    """(3, H, W) RGB in [0, 1] -> (3, H, W) in [0, 1]: ``grey`` luma or ``chroma`` (max - min
    over the channels, scaled so that the image's largest value is 1; an image with no
    colour at all stays 0), the one channel repeated three times."""
    if channels == "grey":
        one = torch.einsum("c,chw->hw", torch.tensor(LUMA, dtype=pixels.dtype), pixels)
    elif channels == "chroma":
        one = pixels.amax(dim=0) - pixels.amin(dim=0)
        top = float(one.max())
        one = one / top if top > 0 else one
    else:
        raise ValueError(f"unknown channels {channels!r}; use rgb, grey or chroma")
    return one.unsqueeze(0).expand(3, -1, -1).contiguous()

"""Image reading and resizing shared by the image-like preprocessors (images, video frames).

PIL images, paths, (H, W[, C]) arrays and (C, H, W) tensors become RGB PIL images, with a
decompression-bomb guard checked before any pixel is decoded.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from PIL import Image
from pydantic import Field
from torch import Tensor

from mmcore.limits import Limit

#: The longest side accepted, in pixels, whatever the pixel count (docs/reliability.md).
IMAGE_SIDE = Limit("image_side", 100_000, "the longest side of an image in pixels")
#: The most elongated image accepted (long side / short side): resizing the short side of
#: a 1 x 20,000,000 strip to 32 would make a 32 x 640,000,000 intermediate.
IMAGE_ASPECT = Limit("image_aspect", 100.0, "an image's long side over its short side")

#: A per-channel normalisation std in a preprocessor config: positive and finite (0 would
#: divide every pixel by zero).
PixelStd = Annotated[float, Field(gt=0, allow_inf_nan=False)]


def check_size(w: int, h: int, max_pixels: int, what: str) -> None:
    """Refuse empty images, images over ``max_pixels`` (decompression bombs), over
    :data:`IMAGE_SIDE` on a side, or more elongated than :data:`IMAGE_ASPECT`."""
    if w == 0 or h == 0:
        raise ValueError(f"{what} is empty ({w}x{h})")
    if w * h > max_pixels:
        raise ValueError(f"{what} is {w}x{h} = {w * h} pixels, over the limit of {max_pixels} "
                         "(decompression-bomb guard; raise the preprocessor's max_pixels if "
                         "you trust it)")
    side, aspect = IMAGE_SIDE.value(), IMAGE_ASPECT.value()
    if max(w, h) > side:
        raise ValueError(f"{what} is {w}x{h}: a side over {side:,} pixels "
                         f"{IMAGE_SIDE.hint()}")
    if max(w, h) / min(w, h) > aspect:
        raise ValueError(f"{what} is {w}x{h}, an aspect ratio over {aspect:g}:1 "
                         f"{IMAGE_ASPECT.hint()}; crop it first")


def to_pil(item: Any, max_pixels: int, what: str = "image") -> Image.Image:
    """A PIL image, path, (H, W[, C]) array or (C, H, W) tensor -> an RGB PIL image."""
    if isinstance(item, (str, Path)):
        return _open(Path(item), max_pixels, what)
    if isinstance(item, Image.Image):
        check_size(*item.size, max_pixels, what)
        return item.convert("RGB")
    if isinstance(item, Tensor):
        item = item.detach().cpu().numpy()
        if item.ndim == 3 and item.shape[0] in (1, 3) and item.shape[2] not in (1, 3, 4):
            item = item.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
    if isinstance(item, np.ndarray):
        return _from_array(item, max_pixels, what)
    raise TypeError(f"cannot read an {what} from {type(item).__name__}; give a PIL image, a "
                    "path, an (H, W, C) array or a (C, H, W) tensor")


def _open(path: Path, max_pixels: int, what: str) -> Image.Image:
    if not path.is_file():
        raise FileNotFoundError(f"no {what} file at {path}")
    with warnings.catch_warnings():  # check_size is the guard; PIL's own would only warn
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = _pil(lambda: Image.open(path), path, what)
    with image:  # header only: the size is known before decoding
        check_size(*image.size, max_pixels, str(path))
        return _pil(lambda: image.convert("RGB"), path, what)


def _pil(call: Callable[[], Image.Image], path: Path, what: str) -> Image.Image:
    """``call()``, with whatever PIL raises for a broken file (OSError, SyntaxError,
    ValueError, struct.error, EOFError, ...) as one ValueError naming the file."""
    try:
        return call()
    except MemoryError:
        raise
    except Exception as exc:  # PIL's decoders raise many kinds on bad data
        reason = str(exc) or type(exc).__name__
        raise ValueError(f"cannot read {what} {path}: {reason}") from None


def _from_array(arr: np.ndarray, max_pixels: int, what: str) -> Image.Image:
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"an {what} array must be (H, W) or (H, W, 1|3|4); got {arr.shape}")
    check_size(arr.shape[1], arr.shape[0], max_pixels, f"{what} array")
    if arr.dtype != np.uint8:
        arr = (np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return Image.fromarray(arr[:, :, :3])


def resize_to_tensor(image: Image.Image, size: int, *, center_crop: bool, mean: Tensor,
                     std: Tensor) -> Tensor:
    """Resize the short side to ``size`` (bicubic, truncating like torchvision) and
    center-crop, or squash to size x size; scale to [0, 1], normalise. -> (3, size, size)."""
    w, h = image.size
    if center_crop:
        scale = size / min(w, h)
        nw, nh = max(size, int(w * scale)), max(size, int(h * scale))
        image = image.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        image = image.crop((left, top, left + size, top + size))
    else:
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (pixels - mean) / std

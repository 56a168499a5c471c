"""Interleaved text and images: the ``flamingo-text`` preprocessor (text with ``<image>``
and ``<|endofchunk|>`` markers -> ids, mask, labels) and ``interleaved-images`` (each
item's list of images -> one (K, 3, S, S) batch, images in marker order).

The built-in vocabulary is UTF-8 bytes 0-255 plus BOS 256, EOS 257, PAD 258, ``<image>``
259 and ``<|endofchunk|>`` 260 (261 ids), so ``flamingo-tiny`` needs no files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pydantic import Field
from torch import Tensor

from mmcore.builder import BuildContext
from mmcore.imaging import PixelStd
from mmcore.registry import ComponentConfig
from mmcore_image.preprocess import ImagePreprocessConfig, ImagePreprocessor

IMAGE, END_OF_CHUNK = "<image>", "<|endofchunk|>"
BOS, EOS, PAD, IMAGE_ID, CHUNK_ID = 256, 257, 258, 259, 260
VOCAB = 261
IGNORE_INDEX = -100
_MARKERS = re.compile(r"(<image>|<\|endofchunk\|>)")


def check_chunks(text: str, *, prompt: bool) -> None:
    """ValueError when an ``<image>`` has no text after it before the next ``<image>`` (or
    the end, unless ``prompt``: a prompt may end at an image, the answer follows)."""
    pieces = text.split(IMAGE)
    for i, chunk in enumerate(pieces[1:], start=1):
        last = i == len(pieces) - 1
        if chunk.replace(END_OF_CHUNK, "").strip() == "" and not (last and prompt):
            where = "at the end of the text" if last else "before the next <image>"
            raise ValueError(f"<image> number {i} has no text chunk after it ({where}): "
                             f"each image needs a following text chunk in {text[:60]!r}")


def encode(text: str) -> list[int]:
    """Text with markers -> byte ids with the marker ids (no BOS)."""
    out: list[int] = []
    for piece in _MARKERS.split(text):
        if piece == IMAGE:
            out.append(IMAGE_ID)
        elif piece == END_OF_CHUNK:
            out.append(CHUNK_ID)
        else:
            out += list(piece.encode("utf-8"))
    return out


def decode(ids: Sequence[int]) -> str:
    """Ids -> text: bytes decoded, markers written back, BOS/EOS/PAD left out."""
    out, run = [], bytearray()
    for i in ids:
        if i < 256:
            run.append(i)
            continue
        out.append(run.decode("utf-8", errors="replace"))
        run = bytearray()
        out.append({IMAGE_ID: IMAGE, CHUNK_ID: END_OF_CHUNK}.get(i, ""))
    return "".join(out) + run.decode("utf-8", errors="replace")


class FlamingoTextConfig(ComponentConfig):
    context_length: int = Field(256, ge=2)
    #: a string item is a training sequence (EOS appended, each image checked for a
    #: following chunk) unless it is a prompt, ``{"prompt": str}``
    eos: bool = False


class FlamingoTextPreprocessor:
    """Items -> ``{"ids": (B, T) int64, "mask": (B, T) bool, "labels": (B, T) int64}``,
    right-padded to ``context_length``. A ``str`` item is a training sequence (labels: its
    ids, -100 on ``<image>`` markers and padding); ``{"prompt": str}`` is a generation
    prompt (it may end at an ``<image>``)."""

    vocab_size = VOCAB
    media_token_id, end_of_chunk_id = IMAGE_ID, CHUNK_ID
    bos_token_id, eos_token_id, pad_token_id = BOS, EOS, PAD

    def __init__(self, cfg: FlamingoTextConfig) -> None:
        self.cfg = cfg

    def row(self, item: Any) -> list[int]:
        """One item's ids (BOS first)."""
        if isinstance(item, Mapping) and "prompt" in item:
            check_chunks(str(item["prompt"]), prompt=True)
            return [BOS, *encode(str(item["prompt"]))]
        if not isinstance(item, str):
            raise TypeError("flamingo-text items are strings (training sequences) or "
                            f"{{'prompt': str}}; got {type(item).__name__}")
        check_chunks(item, prompt=False)
        return [BOS, *encode(item), *([EOS] if self.cfg.eos else [])]

    def __call__(self, items: Sequence[Any]) -> dict[str, Tensor]:
        if isinstance(items, (str, Mapping)) or not items:
            raise TypeError("give a non-empty list of text items")
        rows = [self.row(item) for item in items]
        longest = max(len(r) for r in rows)
        if longest > self.cfg.context_length:
            raise ValueError(f"a sequence of {longest} tokens exceeds context_length "
                             f"{self.cfg.context_length}")
        ids = torch.full((len(rows), self.cfg.context_length), PAD, dtype=torch.long)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = True
        labels = ids.masked_fill(~mask | (ids == IMAGE_ID), IGNORE_INDEX)
        return {"ids": ids, "mask": mask, "labels": labels}

    def decode(self, ids: Sequence[int]) -> str:
        return decode(ids)


def build_flamingo_text(cfg: FlamingoTextConfig, ctx: BuildContext) -> FlamingoTextPreprocessor:
    return FlamingoTextPreprocessor(cfg)


def example_sequences(preprocessor: Any, batch_size: int, generator: Any) -> list[Any]:
    """Sequences with zero, one and two images, for the conformance suite."""
    items: list[Any] = ["a cat<|endofchunk|>", "<image>red<|endofchunk|>",
                        "x<image>red<|endofchunk|><image>blue<|endofchunk|>"]
    return [items[i % len(items)] for i in range(batch_size)]


class InterleavedImagesConfig(ImagePreprocessConfig):
    """The ``image`` preprocessor's options (``channels`` too), with Flamingo's defaults."""

    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[PixelStd, PixelStd, PixelStd] = (0.25, 0.25, 0.25)


class InterleavedImagesPreprocessor(ImagePreprocessor):
    """Items (each a list of images, or one image) -> (K, 3, size, size): every image of
    every item, in order (the order of the ``<image>`` markers, item after item), each as
    the ``image`` preprocessor makes it."""

    def __call__(self, items: Sequence[Any]) -> Tensor:
        flat = [img for item in items
                for img in (item if isinstance(item, (list, tuple)) else [item])]
        if not flat:
            raise ValueError("no images given")
        return torch.stack([self.one(img) for img in flat])


def build_interleaved_images(cfg: InterleavedImagesConfig,
                             ctx: BuildContext) -> InterleavedImagesPreprocessor:
    return InterleavedImagesPreprocessor(cfg)

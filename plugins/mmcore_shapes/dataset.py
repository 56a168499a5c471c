"""The built-in shapes dataset: coloured shapes with captions, generated on the fly.

Item ``i`` of a split is a pure function of ``(seed, split, i)``. Some colour-shape
combinations never appear in ``train``; the ``eval`` split holds exactly those, so
zero-shot evaluation measures composition of seen colours and shapes into unseen pairs.
With ``all_combinations: true`` every split draws from all of them (fresh images per split).

With ``masks: true`` each item also holds a per-pixel segmentation target ``"mask"``:
``(S, S)`` int64, 0 for background and ``1 + colour index`` where the shape is (see
:data:`SEGMENTATION_CLASSES`); the image and every other key stay exactly as without it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field, model_validator

from mmcore.registry import ComponentConfig
from mmcore_shapes.render import COLOURS, SHAPES, render_with_mask

#: split name -> (RNG stream, which combinations it draws from)
SPLITS: dict[str, tuple[int, str]] = {
    "train": (0, "seen"),
    "eval": (1, "unseen"),
    "eval-seen": (2, "seen"),
}
#: per-pixel classes of the segmentation target: background, then one per colour
SEGMENTATION_CLASSES: tuple[str, ...] = ("background", *COLOURS)
CAPTIONS: tuple[str, ...] = (
    "{a} {colour} {shape}",
    "{a} {colour} {shape}.",
    "a picture of {a} {colour} {shape}",
    "{colour} {shape}",
    "a {shape} that is {colour}",
    "the {shape} is {colour}.",
    "{a} {colour} {shape} here",
)
#: zero-shot prompt templates, formatted with a class name such as "red circle"
TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a {}.",
    "a drawing of a {}.",
    "an image of a {}.",
    "a picture of a {}.",
    "the {}.",
)


class ShapesConfig(ComponentConfig):
    image_size: int = Field(32, ge=8, le=512)
    train_size: int = Field(50_000, gt=0)
    eval_size: int = Field(600, gt=0)
    seed: int = Field(0, ge=0)
    #: combinations held out of training per colour (colour c drops shapes c, c+1, ...)
    holdout_per_colour: int = Field(1, ge=1, lt=len(SHAPES))
    #: std of the Gaussian pixel noise, as a fraction of 255
    noise: float = Field(0.06, ge=0, le=1)
    #: shape radius range, as fractions of the image side
    radius: tuple[float, float] = (0.2, 0.36)
    #: which split this dataset serves; :meth:`ShapesDataset.split` gives the others
    split: str = "train"
    #: also yield ``"mask"``: (S, S) int64 per-pixel classes (0 background, 1 + colour)
    masks: bool = False
    #: also yield ``"colour"`` and ``"shape"``: the two factors of ``label`` as indices into
    #: ``COLOURS`` and ``SHAPES`` (for heads that learn them apart)
    factors: bool = False
    #: draw every split from all colour-shape combinations (none held out), each split from
    #: its own RNG stream: for a judge that must know every pair (``shapes-classifier``)
    all_combinations: bool = False

    @model_validator(mode="after")
    def _check(self) -> ShapesConfig:
        if self.split not in SPLITS:
            raise ValueError(f"unknown split {self.split!r}; splits are {', '.join(SPLITS)}")
        low, high = self.radius
        if not 0.05 <= low <= high <= 0.5:
            raise ValueError(f"radius {self.radius} must satisfy 0.05 <= low <= high <= 0.5")
        return self


def class_names() -> list[str]:
    """Every colour-shape combination, index = colour * len(SHAPES) + shape."""
    return [f"{c} {s}" for c in COLOURS for s in SHAPES]


def held_out(per_colour: int = 1) -> list[int]:
    """Class indices never trained on: colour c drops shapes (c + k) mod S, k < per_colour.

    With as many colours as shapes this is a Latin-square diagonal: every colour and
    every shape stays in training with other partners."""
    n = len(SHAPES)
    return sorted(c * n + (c + k) % n for c in range(len(COLOURS)) for k in range(per_colour))


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(colour: str, shape: str, template: int = 0) -> str:
    """The caption the data writes for a colour and a shape with ``CAPTIONS[template]``;
    template 0 is the plain prompt, e.g. ``caption("orange", "star") == "an orange star"``."""
    return CAPTIONS[template].format(a=_article(colour), colour=colour, shape=shape)


class ShapesDataset:
    """Map-style: ``ds[i] -> {"image": PIL.Image, "text": str, "label": int}`` (plus
    ``"mask": (S, S) int64`` with ``masks: true``, ``"colour"`` and ``"shape"`` ints with
    ``factors: true``)."""

    splits: ClassVar[tuple[str, ...]] = tuple(SPLITS)
    templates: ClassVar[list[str]] = list(TEMPLATES)
    #: names of the ``"mask"`` values (index = class)
    segmentation_classes: ClassVar[list[str]] = list(SEGMENTATION_CLASSES)

    def __init__(self, cfg: ShapesConfig) -> None:
        self.cfg = cfg
        self.class_names = class_names()
        unseen = held_out(cfg.holdout_per_colour)
        stream, which = SPLITS[cfg.split]
        self.stream = stream
        if cfg.all_combinations:
            self.labels = list(range(len(self.class_names)))
        else:
            self.labels = unseen if which == "unseen" else [
                i for i in range(len(self.class_names)) if i not in unseen]
        self.size = cfg.train_size if cfg.split == "train" else cfg.eval_size

    @classmethod
    def from_config(cls, cfg: ShapesConfig, ctx: Any = None) -> ShapesDataset:
        return cls(cfg)

    def split(self, name: str) -> ShapesDataset:
        """The same dataset, another split ("train", "eval" = unseen combinations, ...)."""
        if name not in SPLITS:
            raise ValueError(f"shapes has no split {name!r}; splits are {', '.join(SPLITS)}")
        return ShapesDataset(self.cfg.model_copy(update={"split": name}))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} items")
        rng = np.random.default_rng((self.cfg.seed, self.stream, index))
        label = self.labels[index % len(self.labels)]
        colour, shape = self.class_names[label].split(" ")
        image, covered = render_with_mask(colour, shape, self.cfg.image_size, rng,
                                          self.cfg.noise, self.cfg.radius, mask=self.cfg.masks)
        text = caption(colour, shape, int(rng.integers(len(CAPTIONS))))
        item: dict[str, Any] = {"image": image, "text": text, "label": label}
        if self.cfg.factors:
            item["colour"], item["shape"] = divmod(label, len(SHAPES))
        if covered is not None:
            classes = covered.astype(np.int64) * (1 + list(COLOURS).index(colour))
            item["mask"] = torch.from_numpy(classes)  # (S, S) int64
        return item

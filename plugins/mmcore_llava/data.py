"""``shapes-vqa``: questions about the built-in shapes images, answered in words.

Each item asks one of four questions about one coloured shape (``mmcore_shapes``' images,
splits and held-out colour-shape combinations):

====================  ==================  ==========================================
kind                  question            answer
====================  ==================  ==========================================
``colour``            What colour is ..?  ``red``
``shape``             What shape is it?   ``star``
``check``             Is it a red star?   ``yes`` / ``no`` (needs colour and shape)
``describe``          Describe the shape. ``red star`` (needs both)
====================  ==================  ==========================================

A ``check`` question is true half of the time; a false one changes the colour, the shape
or both. The ``eval`` split holds only combinations never seen in training.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from mmcore_shapes import ShapesConfig, ShapesDataset
from mmcore_shapes.render import COLOURS, SHAPES

KINDS: tuple[str, ...] = ("colour", "shape", "check", "describe")
QUESTIONS: dict[str, str] = {
    "colour": "What colour is the shape?",
    "shape": "What shape is it?",
    "check": "Is it {article} {colour} {shape}?",
    "describe": "Describe the shape.",
}


class ShapesVQAConfig(ShapesConfig):
    image_size: int = Field(32, ge=8, le=512)
    #: put the <image> placeholder before the question, on a line of its own
    placeholder: str = "<image>\n"


def _false_pair(colour: str, shape: str, rng: np.random.Generator) -> tuple[str, str]:
    """A (colour, shape) that differs from the truth in the colour, the shape or both."""
    change = int(rng.integers(3))  # 0: colour, 1: shape, 2: both
    if change != 1:
        colour = str(rng.choice([c for c in COLOURS if c != colour]))
    if change != 0:
        shape = str(rng.choice([s for s in SHAPES if s != shape]))
    return colour, shape


def question(kind: str, colour: str, shape: str, rng: np.random.Generator) -> tuple[str, str]:
    """(question, answer) of ``kind`` about a ``colour`` ``shape``."""
    if kind == "colour":
        return QUESTIONS[kind], colour
    if kind == "shape":
        return QUESTIONS[kind], shape
    if kind == "describe":
        return QUESTIONS[kind], f"{colour} {shape}"
    truth = bool(rng.integers(2))
    asked = (colour, shape) if truth else _false_pair(colour, shape, rng)
    article = "an" if asked[0][0] in "aeiou" else "a"
    text = QUESTIONS["check"].format(article=article, colour=asked[0], shape=asked[1])
    return text, "yes" if truth else "no"


class ShapesVQADataset:
    """Map-style: ``ds[i] -> {"image": PIL.Image, "text": {"prompt", "answer"}, "kind": str,
    "label": int}``; item ``i`` is a pure function of (seed, split, i)."""

    splits: ClassVar[tuple[str, ...]] = ShapesDataset.splits
    kinds: ClassVar[tuple[str, ...]] = KINDS

    def __init__(self, cfg: ShapesVQAConfig) -> None:
        self.cfg = cfg
        shapes = ShapesConfig.model_validate(cfg.model_dump(exclude={"placeholder"}))
        self.images = ShapesDataset(shapes)
        self.class_names = self.images.class_names

    @classmethod
    def from_config(cls, cfg: ShapesVQAConfig, ctx: Any = None) -> ShapesVQADataset:
        return cls(cfg)

    def split(self, name: str) -> ShapesVQADataset:
        self.images.split(name)  # checks the name
        return ShapesVQADataset(self.cfg.model_copy(update={"split": name}))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.images[index]
        colour, shape = self.class_names[item["label"]].split(" ")
        rng = np.random.default_rng((self.cfg.seed, self.images.stream, index, 7))
        kind = KINDS[int(rng.integers(len(KINDS)))]
        text, answer = question(kind, colour, shape, rng)
        return {"image": item["image"], "label": item["label"], "kind": kind,
                "text": {"prompt": self.cfg.placeholder + text, "answer": answer}}

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

Two training options (both off by default, which keeps every item as it was):
``kind_weights`` draws the ``train`` split's kinds with these relative weights (every other
split asks them uniformly), and ``seen_checks`` makes a
false ``check`` in the ``train`` split name only combinations that training shows - else a
held-out combination is only ever named in a question whose answer is ``no``, and the model
learns to say ``no`` to it. ``recolour`` (a probability) turns the hue of a ``shape``
question's image in the ``train`` split so that the shape takes a colour the palette does
not have (at least ``RECOLOUR_MARGIN`` degrees of hue from every named colour; the grey
background keeps its grey): the answer never depends on the colour, so the model cannot
learn shape from colour, and no held-out colour-shape combination is ever drawn. With
``factors: true`` items also hold ``colour`` (-100, which cross-entropy ignores, for a
recoloured image) and ``shape`` labels, for pre-training a vision tower on them.
"""

from __future__ import annotations

import colorsys
from typing import Any, ClassVar

import numpy as np
from PIL import Image
from pydantic import Field, model_validator

from mmcore_shapes import ShapesConfig, ShapesDataset
from mmcore_shapes.dataset import class_names, held_out
from mmcore_shapes.render import COLOURS, SHAPES

#: degrees of hue a recoloured shape keeps from every palette colour
RECOLOUR_MARGIN = 25.0
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
    #: relative weights of the kinds (colour, shape, check, describe) in the train split;
    #: None: uniform (the other splits are always uniform)
    kind_weights: tuple[float, float, float, float] | None = None
    #: a false check in the train split names only combinations seen in training
    seen_checks: bool = False
    #: probability that a train-split shape question shows the shape in a non-palette hue
    recolour: float = Field(0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _check_weights(self) -> ShapesVQAConfig:
        if self.kind_weights is not None and (
                min(self.kind_weights) < 0 or sum(self.kind_weights) <= 0):
            raise ValueError(f"kind_weights {self.kind_weights} must be >= 0 with a "
                             "positive sum")
        return self

#: the options above, which the images dataset does not take
_OWN = {"placeholder", "kind_weights", "seen_checks", "recolour"}


def _false_pair(colour: str, shape: str, rng: np.random.Generator,
                avoid: frozenset[str] = frozenset()) -> tuple[str, str]:
    """A (colour, shape) that differs from the truth in the colour, the shape or both, and
    is not one of the ``avoid`` class names ("red star")."""
    change = int(rng.integers(3))  # 0: colour, 1: shape, 2: both
    colours = [c for c in COLOURS if c != colour] if change != 1 else [colour]
    shapes = [s for s in SHAPES if s != shape] if change != 0 else [shape]
    pairs = [(c, s) for c in colours for s in shapes if f"{c} {s}" not in avoid]
    if avoid:
        colour, shape = pairs[int(rng.integers(len(pairs)))]
        return colour, shape
    if change != 1:
        colour = str(rng.choice(colours))
    if change != 0:
        shape = str(rng.choice(shapes))
    return colour, shape


def question(kind: str, colour: str, shape: str, rng: np.random.Generator,
             avoid: frozenset[str] = frozenset()) -> tuple[str, str]:
    """(question, answer) of ``kind`` about a ``colour`` ``shape``; a false check names
    none of the ``avoid`` class names."""
    if kind == "colour":
        return QUESTIONS[kind], colour
    if kind == "shape":
        return QUESTIONS[kind], shape
    if kind == "describe":
        return QUESTIONS[kind], f"{colour} {shape}"
    truth = bool(rng.integers(2))
    asked = (colour, shape) if truth else _false_pair(colour, shape, rng, avoid)
    article = "an" if asked[0][0] in "aeiou" else "a"
    text = QUESTIONS["check"].format(article=article, colour=asked[0], shape=asked[1])
    return text, "yes" if truth else "no"


def _hue(colour: str) -> float:
    """The hue of a palette colour, in degrees."""
    r, g, b = (v / 255 for v in COLOURS[colour])
    return colorsys.rgb_to_hsv(r, g, b)[0] * 360


def off_palette_hue(rng: np.random.Generator) -> float:
    """A hue (degrees) at least :data:`RECOLOUR_MARGIN` from every palette colour's."""
    palette = [_hue(c) for c in COLOURS]
    while True:
        hue = float(rng.uniform(0, 360))
        if all(min(abs(hue - h), 360 - abs(hue - h)) >= RECOLOUR_MARGIN for h in palette):
            return hue


def recolour(image: Image.Image, colour: str, rng: np.random.Generator) -> Image.Image:
    """``image`` with every hue turned so that the ``colour`` shape gets an off-palette hue
    (greys, the background, stay grey)."""
    turn = (off_palette_hue(rng) - _hue(colour)) % 360
    hsv = np.asarray(image.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int64) + round(turn * 256 / 360)) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


class ShapesVQADataset:
    """Map-style: ``ds[i] -> {"image": PIL.Image, "text": {"prompt", "answer"}, "kind": str,
    "label": int}``; item ``i`` is a pure function of (seed, split, i)."""

    splits: ClassVar[tuple[str, ...]] = ShapesDataset.splits
    kinds: ClassVar[tuple[str, ...]] = KINDS

    def __init__(self, cfg: ShapesVQAConfig) -> None:
        self.cfg = cfg
        shapes = ShapesConfig.model_validate(cfg.model_dump(exclude=_OWN))
        self.images = ShapesDataset(shapes)
        self.class_names = self.images.class_names
        unseen = held_out(cfg.holdout_per_colour)
        self.avoid = frozenset(class_names()[i] for i in unseen) if (
            cfg.seen_checks and cfg.split == "train") else frozenset()

    @classmethod
    def from_config(cls, cfg: ShapesVQAConfig, ctx: Any = None) -> ShapesVQADataset:
        return cls(cfg)

    def split(self, name: str) -> ShapesVQADataset:
        self.images.split(name)  # checks the name
        return ShapesVQADataset(self.cfg.model_copy(update={"split": name}))

    def __len__(self) -> int:
        return len(self.images)

    def _kind(self, rng: np.random.Generator) -> str:
        """One of :data:`KINDS`: uniform, or in the ``train`` split drawn with
        ``kind_weights``."""
        weights = self.cfg.kind_weights if self.cfg.split == "train" else None
        if weights is None:
            return KINDS[int(rng.integers(len(KINDS)))]
        p = np.asarray(weights, dtype=np.float64)
        return KINDS[int(rng.choice(len(KINDS), p=p / p.sum()))]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.images[index]
        colour, shape = self.class_names[item["label"]].split(" ")
        rng = np.random.default_rng((self.cfg.seed, self.images.stream, index, 7))
        kind = self._kind(rng)
        text, answer = question(kind, colour, shape, rng, self.avoid)
        image, recoloured = item["image"], False
        if kind == "shape" and self.cfg.recolour and self.cfg.split == "train":
            extra = np.random.default_rng((self.cfg.seed, self.images.stream, index, 11))
            if recoloured := bool(extra.random() < self.cfg.recolour):
                image = recolour(image, colour, extra)
        out = {"image": image, "label": item["label"], "kind": kind,
               "text": {"prompt": self.cfg.placeholder + text, "answer": answer}}
        if self.cfg.factors:  # a recoloured image has no palette colour: -100, ignored
            out["colour"] = -100 if recoloured else item["colour"]
            out["shape"] = item["shape"]
        return out

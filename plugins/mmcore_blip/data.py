"""``shapes-noisy``: the built-in shapes data with a fraction of its captions wrong, the
test bed of CapFilt. A wrong caption describes another colour-shape combination (at least
one of the two words differs). Items are the shapes items plus ``"caption_ok": bool``,
which only evaluation reads; which captions are wrong is a pure function of
``(seed, split, index)``."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from mmcore_shapes.dataset import CAPTIONS, ShapesConfig, ShapesDataset, class_names


class NoisyShapesConfig(ShapesConfig):
    #: fraction of the captions replaced by a wrong one
    wrong_fraction: float = Field(0.3, ge=0, le=1)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


class NoisyShapesDataset:
    """Map-style: ``{"image", "text", "label", "caption_ok"}``."""

    splits = ShapesDataset.splits

    def __init__(self, cfg: NoisyShapesConfig) -> None:
        self.cfg = cfg
        base = {k: v for k, v in cfg.model_dump().items() if k != "wrong_fraction"}
        self.shapes = ShapesDataset(ShapesConfig(**base))
        self.class_names = self.shapes.class_names
        self.templates = self.shapes.templates

    @classmethod
    def from_config(cls, cfg: NoisyShapesConfig, ctx: Any = None) -> NoisyShapesDataset:
        return cls(cfg)

    def split(self, name: str) -> NoisyShapesDataset:
        self.shapes.split(name)  # checks the name
        return NoisyShapesDataset(self.cfg.model_copy(update={"split": name}))

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.shapes[index])
        rng = np.random.default_rng((self.cfg.seed, 1000 + self.shapes.stream, index))
        wrong = bool(rng.random() < self.cfg.wrong_fraction)
        if wrong:
            names = class_names()
            other = int(rng.integers(len(names) - 1))
            other += other >= item["label"]  # any combination but the true one
            colour, shape = names[other].split(" ")
            template = CAPTIONS[int(rng.integers(len(CAPTIONS)))]
            item["text"] = template.format(a=_article(colour), colour=colour, shape=shape)
        item["caption_ok"] = not wrong
        return item

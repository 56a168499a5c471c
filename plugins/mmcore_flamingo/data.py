"""``shapes-few-shot``: interleaved few-shot sequences over the built-in shapes images.

A sequence is k (image, answer) examples and a query image::

    <image>red<|endofchunk|><image>blue<|endofchunk|><image>green<|endofchunk|>

Within a sequence every answer names the colour, or every answer names the shape; nothing
else says which, so with no example (k = 0) the task is ambiguous (50% at best) and the
examples alone define it (in-context learning). Training draws k uniformly from
0..max_shots and images from the seen colour-shape combinations; the ``eval`` split draws
every image from the held-out combinations. Item ``i`` is a pure function of
(seed, split, i).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from mmcore_flamingo.text import END_OF_CHUNK, IMAGE
from mmcore_shapes import ShapesConfig, ShapesDataset

TASKS: tuple[str, ...] = ("colour", "shape")


class ShapesFewShotConfig(ShapesConfig):
    image_size: int = Field(16, ge=8, le=512)
    #: examples before the query at most (training draws 0..max_shots)
    max_shots: int = Field(4, ge=0, le=32)


class ShapesFewShotDataset:
    """Map-style: ``ds[i] -> {"image": [k + 1 PIL images], "text": the whole sequence,
    "prompt": the sequence up to the query's <image>, "answer": str, "task": str,
    "shots": k}``. :meth:`sequence` builds item ``i`` with a chosen k."""

    splits: ClassVar[tuple[str, ...]] = ShapesDataset.splits

    def __init__(self, cfg: ShapesFewShotConfig) -> None:
        self.cfg = cfg
        self.images = ShapesDataset(ShapesConfig.model_validate(
            cfg.model_dump(exclude={"max_shots"})))
        self.class_names = self.images.class_names
        self.stream = 0 if cfg.split == "train" else 1

    @classmethod
    def from_config(cls, cfg: ShapesFewShotConfig, ctx: Any = None) -> ShapesFewShotDataset:
        return cls(cfg)

    def split(self, name: str) -> ShapesFewShotDataset:
        self.images.split(name)  # checks the name
        return ShapesFewShotDataset(self.cfg.model_copy(update={"split": name}))

    def __len__(self) -> int:
        return len(self.images)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng((self.cfg.seed, self.images.stream, index, 11))

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        rng = self._rng(index)
        shots = int(rng.integers(self.cfg.max_shots + 1)) if self.cfg.split == "train" \
            else self.cfg.max_shots
        return self.sequence(index, shots)

    def sequence(self, index: int, shots: int) -> dict[str, Any]:
        """Item ``index`` with ``shots`` examples (the task and images do not depend on
        ``shots``: the first ``shots`` of the same examples are kept)."""
        rng = self._rng(index)
        rng.integers(self.cfg.max_shots + 1)  # the draw __getitem__ uses for k
        task = TASKS[int(rng.integers(len(TASKS)))]
        picks = rng.integers(len(self.images), size=max(shots, self.cfg.max_shots) + 1)
        items = [self.images[int(i)] for i in [*picks[:shots], picks[-1]]]
        answers = [self.class_names[it["label"]].split(" ")[TASKS.index(task)] for it in items]
        prompt = "".join(f"{IMAGE}{a}{END_OF_CHUNK}" for a in answers[:-1]) + IMAGE
        return {"image": [it["image"] for it in items], "text": prompt + answers[-1] + END_OF_CHUNK,
                "prompt": prompt, "answer": answers[-1], "task": task, "shots": shots}

"""A synthetic tabular dataset: Gaussian clusters, one per class, generated on the fly.

Item ``i`` of a split is a pure function of ``(seed, split, i)``; the class centres depend
on ``seed`` alone, so every split shares them. Items follow mmcore's dataset protocol
(:mod:`mmcore.data`): raw values keyed by modality name, plus ``label``.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from mmcore.builder import BuildContext
from mmcore.registry import ComponentConfig

#: split name -> RNG stream
SPLITS = {"train": 0, "eval": 1}


class SyntheticTabularConfig(ComponentConfig):
    num_features: int = Field(8, gt=0)
    num_classes: int = Field(3, ge=2)
    train_size: int = Field(2048, gt=0)
    eval_size: int = Field(256, gt=0)
    #: distance scale of the class centres, in units of the per-feature noise
    separation: float = Field(1.5, gt=0)
    #: fraction of values replaced by None (the preprocessor needs ``allow_missing``)
    missing: float = Field(0.0, ge=0, lt=1)
    seed: int = Field(0, ge=0)
    split: Literal["train", "eval"] = "train"


class SyntheticTabular:
    """Map-style: ``ds[i] -> {"tabular": list[float | None], "label": int}``."""

    splits = tuple(SPLITS)

    def __init__(self, cfg: SyntheticTabularConfig) -> None:
        self.cfg = cfg
        self.class_names = [f"class {c}" for c in range(cfg.num_classes)]
        rng = np.random.default_rng((cfg.seed, 99))
        self.centres = rng.normal(0.0, cfg.separation, (cfg.num_classes, cfg.num_features))
        self.size = cfg.train_size if cfg.split == "train" else cfg.eval_size

    @classmethod
    def from_config(cls, cfg: SyntheticTabularConfig, ctx: BuildContext | None = None
                    ) -> SyntheticTabular:
        return cls(cfg)

    def split(self, name: str) -> SyntheticTabular:
        """The same clusters, another split (``train`` or ``eval``)."""
        if name not in SPLITS:
            raise ValueError(f"synthetic-tabular has no split {name!r}; splits are "
                             f"{', '.join(SPLITS)}")
        return SyntheticTabular(self.cfg.model_copy(update={"split": name}))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} items")
        rng = np.random.default_rng((self.cfg.seed, SPLITS[self.cfg.split], index))
        label = index % self.cfg.num_classes
        values = self.centres[label] + rng.normal(0.0, 1.0, self.cfg.num_features)
        drop = rng.random(self.cfg.num_features) < self.cfg.missing
        row = [None if d else float(v) for v, d in zip(values, drop, strict=True)]
        return {"tabular": row, "label": label}

"""Rows of numbers -> a ``(B, F)`` float32 tensor, optionally standardised per feature."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import Tensor

from mmcore.builder import BuildContext
from mmcore.registry import ComponentConfig


class TabularPreprocessConfig(ComponentConfig):
    num_features: int = Field(gt=0)
    #: per-feature mean and std for standardisation (both or neither)
    mean: list[float] | None = None
    std: list[float] | None = None
    #: keep missing values (None, NaN) as NaN for the tokenizer to mask; else they are an error
    allow_missing: bool = False

    @model_validator(mode="after")
    def _stats(self) -> TabularPreprocessConfig:
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and len(values) != self.num_features:
                raise ValueError(f"{name} has {len(values)} values for "
                                 f"{self.num_features} features")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError("std values must be > 0")
        return self


class TabularPreprocessor:
    """items: rows of F numbers (lists, arrays, tensors) or one (B, F) array -> (B, F).

    ``None`` and NaN mark a missing value (kept as NaN when ``allow_missing``)."""

    def __init__(self, cfg: TabularPreprocessConfig) -> None:
        self.cfg = cfg

    @classmethod
    def from_config(cls, cfg: TabularPreprocessConfig, ctx: BuildContext) -> TabularPreprocessor:
        return cls(cfg)

    def __call__(self, items: Sequence[Any]) -> Tensor:
        values = self._as_array(items)  # (B, F) float64
        if not self.cfg.allow_missing and not np.isfinite(values).all():
            raise ValueError("missing or infinite feature values; set allow_missing: true "
                             "to mask missing ones")
        values[np.isinf(values)] = np.nan
        if self.cfg.mean is not None and self.cfg.std is not None:
            values = (values - np.asarray(self.cfg.mean)) / np.asarray(self.cfg.std)
        return torch.from_numpy(values.astype(np.float32))

    def _as_array(self, items: Sequence[Any]) -> np.ndarray:
        if isinstance(items, Tensor):
            items = items.detach().cpu().numpy()
        try:
            rows = [np.asarray(row.detach().cpu() if isinstance(row, Tensor) else row,
                               dtype=np.float64) for row in items]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"tabular items must be rows of numbers: {exc}") from None
        if not rows:
            raise ValueError("no rows given")
        bad = [i for i, r in enumerate(rows) if r.shape != (self.cfg.num_features,)]
        if bad:
            raise ValueError(f"row {bad[0]} has shape {rows[bad[0]].shape}; every row needs "
                             f"{self.cfg.num_features} features")
        return np.stack(rows)


def example_rows(preprocessor: TabularPreprocessor, batch_size: int,
                 generator: torch.Generator) -> list[list[float]]:
    """Random raw rows (plain float lists), for the conformance suite."""
    values = torch.randn(batch_size, preprocessor.cfg.num_features, generator=generator)
    return values.tolist()

"""What every evaluation reads its data with: the first items of a dataset, columns of
item values, and raw items embedded in batches. Shared by :mod:`mmcore.evaluate` and
:mod:`mmcore.probe` (neither imports the other's internals)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mmcore.data import Dataset
from mmcore.progress import Progress


class Head:
    """The first ``limit`` items of a dataset."""

    def __init__(self, dataset: Dataset, limit: int) -> None:
        self.dataset, self.size = dataset, min(limit, len(dataset))
        for attr in ("class_names", "templates"):
            if hasattr(dataset, attr):
                setattr(self, attr, getattr(dataset, attr))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Mapping[str, Any]:
        if not 0 <= index < self.size:
            raise IndexError(index)
        return self.dataset[index]


def batches(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(start + size, n))


def embed_raw(model: Any, modality: str, items: Sequence[Any], batch_size: int,
              bar: Progress | None = None, *, normalize: bool = True) -> Tensor:
    """Raw items -> embeddings (N, E), L2-normalised unless ``normalize`` is False, in
    batches, on the CPU."""
    out = []
    for rows in batches(len(items), batch_size):
        raw = [items[i] for i in rows]
        with_views = getattr(model, "preprocess_with_views", None)  # a MultimodalModel's
        inputs = (with_views(modality, raw) if with_views is not None
                  else {modality: model.preprocess(modality, raw)})
        emb = (model.embed(modality, inputs[modality]) if len(inputs) == 1  # no views
               else model.fusion(model.encode(inputs)).embeddings[modality]).float()
        out.append((F.normalize(emb, dim=-1) if normalize else emb).cpu())
        if bar is not None:
            bar.update(len(rows))
    return torch.cat(out) if out else torch.empty(0, 0)


def read_columns(dataset: Dataset, keys: Sequence[str], bar: Progress) -> dict[str, list[Any]]:
    """Read every item once; keep the given keys. -> key: list of N values."""
    columns: dict[str, list[Any]] = {k: [] for k in keys}
    for i in range(len(dataset)):
        item = dataset[i]
        for key in keys:
            if key not in item:
                raise KeyError(f"dataset item {i} has no {key!r}; it has {sorted(item)}")
            columns[key].append(item[key])
        bar.update(1)
    return columns

"""Datasets, collation and a resumable sampler.

A dataset is map-style: ``len(ds)`` and ``ds[i] -> {"image": PIL.Image, "text": str,
"label": int, ...}`` holding *raw* items keyed by modality name. Preprocessing happens in
:class:`Collator`, which runs inside DataLoader workers, so it holds only the model's
plain preprocessor objects (picklable), never the model.

Training also takes a streaming dataset: a torch ``IterableDataset`` (such as
the ``webdataset`` dataset) with ``set_epoch(epoch)``, no ``len`` and no sampler;
it splits itself across ranks and workers.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from itertools import islice
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, runtime_checkable

import numpy as np
import torch
from torch.utils.data import IterableDataset, Sampler

from mmcore.spec import ComponentRef

if TYPE_CHECKING:
    from mmcore.registry import Registry

#: the usual split names; a dataset may offer others
TRAIN, EVAL = "train", "eval"


@runtime_checkable
class Dataset(Protocol):
    """Map-style raw data. Optional attributes: ``class_names: list[str]`` (label index ->
    name), ``templates: list[str]`` (zero-shot prompts with one ``{}``), ``splits`` and
    ``split(name) -> Dataset`` (e.g. ``"train"``, ``"eval"``)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Mapping[str, Any]: ...


def select_split(dataset: Dataset, split: str) -> Dataset:
    """``dataset.split(split)`` where the dataset has splits; a dataset without them is
    one split that serves every name."""
    chooser = getattr(dataset, "split", None)
    return chooser(split) if callable(chooser) else dataset


#: what training reads: map-style items, or a stream (``IterableDataset`` with set_epoch)
TrainData: TypeAlias = "Dataset | IterableDataset[Any]"


def is_stream(dataset: Any) -> bool:
    """Whether ``dataset`` is a stream (an ``IterableDataset``) rather than map-style."""
    return isinstance(dataset, IterableDataset)


def _make_dataset(ref: ComponentRef, registry: Registry | None) -> Any:
    from mmcore.builder import BuildContext, make_component
    from mmcore.kernels import KernelSet
    from mmcore.plugins import get_registry

    return make_component(registry or get_registry(), "dataset", ref,
                          BuildContext(kernels=KernelSet()))


def open_dataset(ref: ComponentRef, split: str = TRAIN,
                 registry: Registry | None = None) -> Dataset:
    """Build the registered map-style dataset ``ref`` (a spec's ``data:``), pick ``split``."""
    dataset = _make_dataset(ref, registry)
    if not isinstance(dataset, Dataset) or is_stream(dataset):
        raise TypeError(f"dataset {ref.type!r} returned {type(dataset).__name__}, which has "
                        "no __len__/__getitem__ (a stream can be trained on, not indexed)")
    return select_split(dataset, split)


def open_train_data(ref: ComponentRef, split: str = TRAIN,
                    registry: Registry | None = None) -> TrainData:
    """Like :func:`open_dataset`, but a streaming dataset is accepted too."""
    dataset = _make_dataset(ref, registry)
    if is_stream(dataset):
        chooser = getattr(dataset, "split", None)
        return chooser(split) if callable(chooser) else dataset
    if not isinstance(dataset, Dataset):
        raise TypeError(f"dataset {ref.type!r} returned {type(dataset).__name__}, which is "
                        "neither map-style (__len__/__getitem__) nor an IterableDataset")
    return select_split(dataset, split)


def _spec_data(spec: Any) -> ComponentRef:
    if spec is None or spec.data is None:
        raise ValueError("the spec has no 'data:' component; add one, e.g. "
                         "'data: {type: shapes}', or pass a dataset")
    return spec.data


def spec_dataset(spec: Any, split: str = TRAIN) -> Dataset:
    """The map-style dataset a ModelSpec names under ``data:``, at ``split``."""
    return open_dataset(_spec_data(spec), split)


def spec_train_data(spec: Any, split: str = TRAIN) -> TrainData:
    """The dataset a ModelSpec names under ``data:`` (map-style or a stream), at ``split``."""
    return open_train_data(_spec_data(spec), split)


class Collator:
    """Raw item dicts -> a batch: each modality through its preprocessor, numbers into
    tensors (``label`` -> (B,) int64), tensors stacked, anything else kept as a list.

    Picklable when the preprocessors are, so it can run in DataLoader workers.
    """

    def __init__(self, preprocessors: Mapping[str, Any],
                 sources: Mapping[str, str] | None = None) -> None:
        self.preprocessors = dict(preprocessors)
        #: modality -> the item key it reads, where that is not its own name
        self.sources = {m: k for m, k in (sources or {}).items() if m != k}

    @classmethod
    def for_model(cls, model: Any) -> Collator:
        """The collator using ``model.preprocess``'s preprocessors (not the model itself)
        and the item keys its spec's modalities read."""
        spec = getattr(model, "spec", None)
        return cls(model.preprocessors, spec.sources() if spec is not None else None)

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not items:
            raise ValueError("cannot collate an empty batch")
        batch: dict[str, Any] = {}
        for key in items[0]:
            values = [item[key] for item in items]
            if key in self.preprocessors and key not in self.sources:
                batch[key] = self.preprocessors[key](values)
            else:
                batch[key] = _stack(values)
        for modality, key in self.sources.items():  # views of another key
            if modality in items[0]:
                raise ValueError(f"modality {modality!r} reads the items' {key!r}, but the "
                                 f"items also hold a key {modality!r}; rename the modality")
            if key in items[0] and modality in self.preprocessors:
                batch[modality] = self.preprocessors[modality]([item[key] for item in items])
        return batch


def _stack(values: list[Any]) -> Any:
    """Ints -> (B,) int64, floats -> (B,) float32, tensors -> stacked, else the list."""
    first = values[0]
    if isinstance(first, bool | np.bool_):
        return torch.tensor(values, dtype=torch.bool)
    if isinstance(first, int | np.integer):
        return torch.tensor(values, dtype=torch.long)
    if isinstance(first, float | np.floating):
        return torch.tensor(values, dtype=torch.float32)
    if isinstance(first, torch.Tensor):
        return torch.stack(values)
    return values


class ResumableSampler(Sampler[int]):
    """An endless stream of indices: a fresh seeded permutation of ``range(length)`` each
    epoch. Sample number ``n`` is always the same index, so a run restarted at
    ``start=n`` continues exactly where it stopped."""

    def __init__(self, length: int, *, seed: int = 0, start: int = 0) -> None:
        if length <= 0:
            raise ValueError("cannot sample from an empty dataset")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.length, self.seed, self.start = length, seed, start

    def permutation(self, epoch: int) -> np.ndarray:
        """The order of epoch ``epoch``. (length,) int64"""
        return np.random.default_rng((self.seed, epoch)).permutation(self.length)

    def __iter__(self) -> Iterator[int]:
        epoch, offset = divmod(self.start, self.length)
        while True:
            for index in self.permutation(epoch)[offset:]:
                yield int(index)
            epoch, offset = epoch + 1, 0

    def state_dict(self, consumed: int) -> dict[str, int]:
        """What to save: the seed and how many samples were consumed."""
        return {"seed": self.seed, "consumed": consumed, "length": self.length}

    @classmethod
    def from_state(cls, state: Mapping[str, int], length: int) -> ResumableSampler:
        if int(state["length"]) != length:
            raise ValueError(f"the dataset has {length} items but the saved sampler had "
                             f"{state['length']}; resume with the same data")
        return cls(length, seed=int(state["seed"]), start=int(state["consumed"]))


class StepBatches(Sampler[list[int]]):
    """This rank's micro-batches of index lists, cut from one global sample stream.

    Optimizer step ``s`` uses samples ``[s * batch_size, (s + 1) * batch_size)`` of
    ``sampler``'s stream; rank ``r`` takes the ``r``-th contiguous share of them and cuts it
    into ``micro_batches`` equal lists. The data of a step therefore does not depend on the
    world size, and a checkpoint that consumed ``n`` samples resumes under any world size.
    """

    def __init__(self, sampler: ResumableSampler, *, batch_size: int, rank: int = 0,
                 world_size: int = 1, micro_batches: int = 1) -> None:
        if batch_size % (world_size * micro_batches):
            raise ValueError(f"batch_size {batch_size} does not divide into {world_size} "
                             f"rank(s) x {micro_batches} micro-batch(es)")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of {world_size}")
        self.sampler, self.batch_size = sampler, batch_size
        self.rank, self.world_size, self.micro_batches = rank, world_size, micro_batches

    @property
    def micro_batch_size(self) -> int:
        return self.batch_size // (self.world_size * self.micro_batches)

    def __iter__(self) -> Iterator[list[int]]:
        stream = iter(self.sampler)
        share = self.batch_size // self.world_size
        micro = self.micro_batch_size
        while True:
            step = list(islice(stream, self.batch_size))  # the sampler never ends
            mine = step[self.rank * share:(self.rank + 1) * share]
            for m in range(self.micro_batches):
                yield mine[m * micro:(m + 1) * micro]

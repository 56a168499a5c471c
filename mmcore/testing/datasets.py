"""Dataset checks for the conformance suite: a spec's data feeds its model.

:func:`check_dataset` reads the first items of the dataset a spec names under ``data:``
(or one given) and checks that each is a mapping with a value for every modality of the
spec, and that they collate through the spec's preprocessors into a batch that holds each
modality with a leading batch dimension. Failures raise AssertionError naming the item and
the missing key. It needs no pytest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from mmcore.builder import BuildContext, make_component
from mmcore.data import Collator, Dataset, spec_dataset
from mmcore.kernels import KernelSet
from mmcore.registry import Registry
from mmcore.spec import ModelSpec


def check_dataset(spec: ModelSpec, dataset: Dataset | None = None, *, split: str = "train",
                  items: int = 4, registry: Registry | None = None) -> dict[str, Any]:
    """Check ``dataset`` (default: the spec's ``data:`` at ``split``) against ``spec``;
    returns the collated batch of its first ``items`` items."""
    data = dataset if dataset is not None else spec_dataset(spec, split)
    count = min(items, len(data))
    if count == 0:
        raise AssertionError("the dataset is empty")
    rows = [data[i] for i in range(count)]
    for index, row in enumerate(rows):
        check_item(row, sorted(set(spec.sources().values())), index)
    collate = Collator(spec_preprocessors(spec, registry), spec.sources())
    try:
        batch = collate(rows)
    except Exception as exc:
        raise AssertionError(f"items 0..{count - 1} do not collate: "
                             f"{type(exc).__name__}: {exc}") from exc
    for name in spec.modalities:
        _check_batched(batch[name], count, name)
    return batch


def check_item(item: Any, modalities: Sequence[str] | Mapping[str, Any], index: int = 0) -> None:
    """Item ``index`` is a mapping holding a value for every modality name."""
    if not isinstance(item, Mapping):
        raise AssertionError(f"item {index} is a {type(item).__name__}, not a mapping "
                             "{modality: raw value, ...}")
    missing = [name for name in modalities if item.get(name) is None]
    if missing:
        raise AssertionError(f"item {index} lacks the modality key(s) {', '.join(missing)} "
                             f"that the spec needs (it has {', '.join(map(str, item))})")


def spec_preprocessors(spec: ModelSpec, registry: Registry | None = None) -> dict[str, Any]:
    """The spec's preprocessors by modality (modalities without one are left out)."""
    from mmcore.plugins import get_registry

    reg = registry or get_registry()
    out = {}
    for name, modality in spec.modalities.items():
        if modality.preprocessor is not None:
            ctx = BuildContext(kernels=KernelSet(), modality=name)
            out[name] = make_component(reg, "preprocessor", modality.preprocessor, ctx)
    return out


def _check_batched(value: Any, count: int, name: str) -> None:
    tensors = [value] if isinstance(value, Tensor) else (
        [v for v in value.values() if isinstance(v, Tensor)] if isinstance(value, Mapping)
        else [])
    if not tensors:
        raise AssertionError(f"the collated {name!r} holds no tensors "
                             f"(got {type(value).__name__}); does the spec give it a "
                             "preprocessor?")
    wrong = [tuple(t.shape) for t in tensors if t.dim() == 0 or t.shape[0] != count]
    if wrong:
        raise AssertionError(f"the collated {name!r} has shape(s) {wrong}, expected a leading "
                             f"batch of {count}")

"""The conformance suite plugin authors run on their own components.

Every registered preprocessor (that supplies an ``example``), tokenizer, encoder, fusion,
head and objective is built from its entry's ``tiny`` config and must pass: forward
(the contract type with the right shapes, finite values), backward (every trainable
parameter gets a finite gradient), a safetensors save/load round trip (a freshly built
module gives exactly the same outputs), batch invariance (in eval mode, a batch of
three gives what each element gives alone, within 1e-5) and padding invariance (random,
non-constant values at padded input positions leave the real tokens' outputs and every
pooled output unchanged, within 1e-5). :func:`check_dataset` checks that a spec's data
has every modality's key and collates. In a plugin's tests::

    import pytest
    from mmcore.plugins import get_registry
    from mmcore.testing import check_component, conformance_params

    @pytest.mark.parametrize(("kind", "name"), conformance_params(plugin="my_plugin"))
    def test_conformance(kind: str, name: str) -> None:
        check_component(get_registry(), kind, name)

The harness builds each component with a standard :class:`BuildContext` and feeds it
standard inputs, so a ``tiny`` config may name them:

- fusions receive modalities ``alpha`` (width 16) and ``beta`` (width 12) with padding masks;
- encoders receive Tokens of width ``tiny["width"]``, or 16 when the config sets none;
- heads and objectives see pooled embeddings ``alpha``, ``beta`` and ``fused`` of width 8;
  objectives also see a head ``logits`` with 3 classes and ``batch["label"]``.

An entry's ``example(module, batch_size, generator)`` replaces the standard input with its
own: raw items (preprocessor), the collated tensors (tokenizer; required, as the core knows
no modality), Tokens (encoder), ``{name: Tokens}`` (fusion), a FusionOutput (head) or a
``(ModelOutput, batch)`` pair (objective). Seeds are fixed, so a failure reproduces.

Nothing here imports pytest: :func:`conformance_params` gives ``pytest.param`` objects
when pytest is installed and plain ``(kind, name)`` tuples otherwise.
"""

from __future__ import annotations

from typing import Any

import torch

from mmcore.errors import RegistryError
from mmcore.registry import Registry
from mmcore.testing import checks
from mmcore.testing.constants import (
    BATCH_SIZE,
    CHECKED_KINDS,
    EMBEDDING_WIDTH,
    ENCODER_WIDTH,
    HEAD_NAME,
    MODALITY_WIDTHS,
    NUM_CLASSES,
    SEED,
    TOLERANCE,
)
from mmcore.testing.datasets import check_dataset, check_item
from mmcore.testing.local import plugin_registry

__all__ = ["BATCH_SIZE", "CHECKED_KINDS", "EMBEDDING_WIDTH", "ENCODER_WIDTH", "HEAD_NAME",
           "MODALITY_WIDTHS", "NUM_CLASSES", "SEED", "TOLERANCE", "case_id",
           "check_component", "check_dataset", "check_item", "conformance_cases",
           "conformance_params", "plugin_registry"]


def conformance_cases(registry: Registry, *, plugin: str | None = None) -> list[tuple[str, str]]:
    """``(kind, name)`` of every component the suite checks, optionally of one plugin.

    Preprocessors are included when their entry supplies an ``example`` (raw items).
    """
    cases = []
    for kind in CHECKED_KINDS:
        for entry in registry.list(kind):
            if plugin is not None and entry.plugin != plugin:
                continue
            if kind == "preprocessor" and entry.example is None:
                continue
            cases.append((kind, entry.name))
    return cases


def case_id(kind: str, name: str) -> str:
    """A test id such as ``encoder:vit``."""
    return f"{kind}:{name}"


def conformance_params(registry: Registry | None = None, *,
                       plugin: str | None = None) -> list[Any]:
    """``pytest.param(kind, name, id="kind:name")`` for each case, to parametrize over;
    plain ``(kind, name)`` tuples when pytest is not installed (a loop runs them)."""
    if registry is None:
        from mmcore.plugins import get_registry

        registry = get_registry()
    cases = conformance_cases(registry, plugin=plugin)
    try:
        import pytest
    except ImportError:
        return list(cases)
    return [pytest.param(kind, name, id=case_id(kind, name)) for kind, name in cases]


def check_component(registry: Registry, kind: str, name: str) -> None:
    """Run every conformance check on one registered component.

    Raises AssertionError naming the component, the check that failed and why.
    """
    try:
        entry = registry.get(kind, name)
    except RegistryError as exc:
        raise AssertionError(str(exc)) from None
    if kind not in CHECKED_KINDS:
        raise AssertionError(f"the conformance suite checks {', '.join(CHECKED_KINDS)}; "
                             f"not {kind!r}")
    label = f"{kind} {name!r} (plugin {entry.plugin}, {entry.location})"
    with torch.random.fork_rng(devices=[]):
        if kind == "preprocessor":
            checks.check_preprocessor(entry, label)
        else:
            checks.check_module(entry, label, checks.HARNESSES[kind])



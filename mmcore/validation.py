"""Checks that go beyond one component's own params: training options and neighbouring
components against each other. ``mmcore validate`` runs them all and reports every
problem at once; ``mmcore train`` runs them before anything is built."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mmcore.errors import SpecError, SpecIssue, suggest

if TYPE_CHECKING:
    from mmcore.registry import Registry
    from mmcore.spec import ModelSpec


def training_problems(spec: ModelSpec) -> list[SpecIssue]:
    """What is wrong with ``train.freeze`` and ``train.activation_checkpointing``."""
    problems = []
    known = spec.module_paths()
    for i, path in enumerate(spec.train.freeze):
        if path not in known:
            hint = suggest(path, known) or f" Paths: {', '.join(known)}"
            problems.append(SpecIssue(f"train.freeze.{i}", f"unknown component {path!r}.{hint}"))
    checkpointed = spec.train.activation_checkpointing
    if isinstance(checkpointed, list):
        encoded = [m for m, ms in spec.modalities.items() if ms.encoder is not None]
        for i, name in enumerate(checkpointed):
            if name not in encoded:
                problems.append(SpecIssue(f"train.activation_checkpointing.{i}",
                                          f"{name!r} is not a modality with an encoder; "
                                          f"those are {encoded}"))
    return problems


def spec_problems(spec: ModelSpec, registry: Registry | None = None) -> list[SpecIssue]:
    """Every cross-component and training-option problem of a parsed ``spec``."""
    return training_problems(spec)


def check(spec: ModelSpec, registry: Registry | None = None) -> None:
    """Raise :class:`SpecError` listing every problem :func:`spec_problems` finds."""
    problems = spec_problems(spec, registry)
    if problems:
        raise SpecError(problems, spec.name)

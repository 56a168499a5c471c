"""Evaluation tasks that plugins add to ``mmcore eval`` and :func:`mmcore.evaluate.evaluate`.

The core evaluates contrastive models itself (zero-shot, retrieval); every other task
(VQA, few-shot, captioning, segmentation, generation, ...) belongs to the plugin of the
model family it judges and is registered through ``register_eval_tasks``::

    @mmcore.hookimpl
    def register_eval_tasks(register):
        register("vqa", VQATask, summary="answer accuracy on held-out questions")

``factory()`` returns an :class:`EvalTask`. ``mmcore eval RUN --task vqa`` loads the model,
opens the spec's evaluation split (or ``--data``) and calls ``run``; the task's own
command-line options come from its ``add_arguments``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class TaskOptions:
    """What every evaluation gets: batch size, progress bar, device, item limit, and the
    task's own options (from its ``add_arguments`` on the command line, or keyword
    arguments of :func:`mmcore.evaluate.evaluate`)."""

    batch_size: int = 64
    progress: bool = True
    device: str | None = None
    limit: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class EvalTask(Protocol):
    """One evaluation task a plugin registers."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the task's own options to ``mmcore eval`` (names must be unique); may do
        nothing."""
        ...

    def run(self, model: Any, data: Any, options: TaskOptions) -> dict[str, Any]:
        """Evaluate ``model`` (in eval mode, under no_grad) on ``data`` (a dataset of dicts,
        or None when the model's spec has no data); returns JSON-able metrics."""
        ...


def registered_tasks() -> dict[str, EvalTask]:
    """Every task the plugins register, by name."""
    from mmcore.plugins import get_registry

    return {entry.name: entry.factory() for entry in get_registry().list("task")}

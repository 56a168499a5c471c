"""Evaluation tasks registered by plugins run through ``mmcore.evaluate.evaluate``."""

from __future__ import annotations

import argparse
from typing import Any

import pytest
import torch

import mmcore
from mmcore import evaluate as evaluation
from mmcore.tasks import TaskOptions


class _CountTask:
    """Counts the eval items; records the mode the model was in and the options."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--shots", default="0")

    def run(self, model: Any, data: Any, options: TaskOptions) -> dict[str, Any]:
        self.seen = {"training": model.training, "grad": torch.is_grad_enabled(),
                     "options": options}
        return {"items": len(data)}


def test_a_plugin_task_gets_the_model_in_eval_mode_and_its_options(
        monkeypatch: pytest.MonkeyPatch) -> None:
    task = _CountTask()
    monkeypatch.setattr(evaluation, "registered_tasks", lambda: {"count": task})
    model = mmcore.build("clip-tiny")
    model.train()
    metrics = evaluation.evaluate(model, "count", limit=5, progress=False, shots="0,1")
    assert metrics == {"items": 5}
    assert task.seen["training"] is False and task.seen["grad"] is False
    assert task.seen["options"].extra == {"shots": "0,1"}
    assert task.seen["options"].limit == 5
    assert model.training  # restored


def test_an_unknown_task_names_the_nearest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evaluation, "registered_tasks", lambda: {"count": _CountTask()})
    with pytest.raises(ValueError, match=r"unknown task 'cont'.*'count'"):
        evaluation.evaluate(mmcore.build("clip-tiny"), "cont")

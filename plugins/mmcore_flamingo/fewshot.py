"""The ``few-shot`` evaluation task: for each shot count k, greedy answers to the query of
held-out sequences with k examples, scored by exact match. ``mmcore eval RUN --task
few-shot --shots 0,1,2,4`` runs it on the spec's evaluation split (``shapes-few-shot``:
held-out colour-shape combinations)."""

from __future__ import annotations

import argparse
from typing import Any

from mmcore.tasks import TaskOptions
from mmcore_flamingo.runner import complete, default_config


def parse_shots(text: str) -> list[int]:
    """``"0,1,2,4"`` -> [0, 1, 2, 4]; ValueError naming the flag otherwise."""
    try:
        shots = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--shots {text!r}: give comma-separated counts such as 0,1,2,4") \
            from None
    if not shots or min(shots) < 0:
        raise ValueError(f"--shots {text!r}: give comma-separated counts >= 0")
    return shots


def accuracy_at(model: Any, data: Any, shots: int, count: int, batch_size: int,
                longest: int) -> dict[str, Any]:
    """Accuracy of ``count`` sequences with ``shots`` examples, overall and per task."""
    config = default_config(model, longest)
    right: list[bool] = []
    tasks: list[str] = []
    for start in range(0, count, batch_size):
        items = [data.sequence(i, shots) for i in range(start, min(start + batch_size, count))]
        images = [img for it in items for img in it["image"]]
        answers = complete(model, [it["prompt"] for it in items], images, config)
        right += [a.strip() == it["answer"] for a, it in zip(answers, items, strict=True)]
        tasks += [it["task"] for it in items]
    out: dict[str, Any] = {"accuracy": sum(right) / len(right), "sequences": len(right)}
    for task in sorted(set(tasks)):
        mine = [r for r, t in zip(right, tasks, strict=True) if t == task]
        out[f"accuracy/{task}"] = sum(mine) / len(mine)
    return out


class FewShotTask:
    """``few-shot``: needs a dataset with ``sequence(index, shots)`` (``shapes-few-shot``)."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--shots", default="0,1,2,4", metavar="K,K,...",
                            help="few-shot: example counts to evaluate (default 0,1,2,4)")

    def run(self, model: Any, data: Any, options: TaskOptions) -> dict[str, Any]:
        count = None if data is None else len(data)
        data = getattr(data, "dataset", data)  # under --limit: the dataset it cuts
        if data is None or not hasattr(data, "sequence"):
            raise ValueError("few-shot needs a few-shot dataset such as shapes-few-shot (the "
                             "spec's data or --data)")
        shots = parse_shots(options.extra.get("shots") or "0,1,2,4")
        count = len(data) if count is None else count
        result: dict[str, Any] = {}
        for k in shots:
            at = accuracy_at(model, data, k, count, options.batch_size, 12)
            result.update({f"{k}-shot/{name}": value for name, value in at.items()})
        return result

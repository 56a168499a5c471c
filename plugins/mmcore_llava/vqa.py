"""The ``vqa`` evaluation task: greedy answers to held-out questions, scored by exact match
(after lower-casing and trimming spaces and a final full stop), overall and per question
kind. ``mmcore eval RUN --task vqa`` runs it on the spec's evaluation split."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from mmcore.tasks import TaskOptions
from mmcore_llava.runner import answer


def normalise(text: str) -> str:
    """Lower case, surrounding spaces and a final full stop removed."""
    return text.strip().lower().rstrip(".").strip()


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[str],
                 kinds: Sequence[str] | None = None) -> dict[str, Any]:
    """``accuracy`` (exact match after :func:`normalise`), ``correct``, ``questions``, and
    ``accuracy/<kind>`` for each question kind given."""
    if len(predictions) != len(answers) or (kinds is not None and len(kinds) != len(answers)):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} answers")
    if not answers:
        raise ValueError("no questions to score")
    right = [normalise(p) == normalise(a) for p, a in zip(predictions, answers, strict=True)]
    out: dict[str, Any] = {"accuracy": sum(right) / len(right), "correct": sum(right),
                           "questions": len(right)}
    for kind in sorted(set(kinds or [])):
        mine = [r for r, k in zip(right, kinds or [], strict=True) if k == kind]
        out[f"accuracy/{kind}"] = sum(mine) / len(mine)
    return out


class VQATask:
    """``vqa``: items ``{"image", "text": {"prompt", "answer"}, "kind"?}`` (``shapes-vqa``)."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--max-answer-tokens", type=int, default=16, metavar="N",
                            help="vqa: tokens generated per answer at most (default 16)")

    def run(self, model: Any, data: Any, options: TaskOptions) -> dict[str, Any]:
        if data is None:
            raise ValueError("vqa needs question data: the spec's data or --data")
        count = len(data) if options.limit is None else min(options.limit, len(data))
        predictions, answers, kinds = [], [], []
        longest = int(options.extra.get("max_answer_tokens") or 16)
        for start in range(0, count, options.batch_size):
            items = [data[i] for i in range(start, min(start + options.batch_size, count))]
            predictions += answer(model, [it["text"]["prompt"] for it in items],
                                  [it["image"] for it in items], max_new_tokens=longest)
            answers += [it["text"]["answer"] for it in items]
            kinds += [str(it.get("kind", "all")) for it in items]
        result = vqa_accuracy(predictions, answers, kinds)
        result["examples"] = [{"question": data[i]["text"]["prompt"], "answer": answers[i],
                               "prediction": predictions[i]} for i in range(min(5, count))]
        return result

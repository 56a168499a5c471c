"""Per-pixel segmentation metrics and the ``segmentation`` task of ``mmcore eval``.

The model's ``per-query-classification`` objective names the head (per-pixel logits
``(B, H*W, C)``) and the target key (a ``(B, H, W)`` mask); evaluation runs the model over
the spec's evaluation data and accumulates a confusion matrix, from which per-pixel
accuracy and the mean intersection-over-union follow.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import Tensor

SUMMARY = "per-pixel accuracy and mean IoU of a per-query (Perceiver IO) segmentation model"


def confusion(predicted: Tensor, target: Tensor, num_classes: int,
              ignore_index: int = -100) -> Tensor:
    """(C, C) int64 counts: row = true class, column = predicted, over unignored pixels."""
    keep = target != ignore_index
    t, p = target[keep].long(), predicted[keep].long()
    return torch.bincount(t * num_classes + p, minlength=num_classes ** 2).reshape(
        num_classes, num_classes)


def metrics(matrix: Tensor, class_names: list[str] | None = None) -> dict[str, Any]:
    """Pixel accuracy, per-class IoU and mean IoU (over classes that occur in the truth or
    the predictions) from a confusion matrix (C, C)."""
    matrix = matrix.double()
    hits = matrix.diag()
    union = matrix.sum(0) + matrix.sum(1) - hits
    present = union > 0
    iou = torch.where(present, hits / union.clamp(min=1), torch.zeros_like(hits))
    names = class_names or [str(i) for i in range(matrix.shape[0])]
    total = matrix.sum()
    return {
        "pixel_accuracy": float(hits.sum() / total) if total else 0.0,
        "mean_iou": float(iou[present].mean()) if present.any() else 0.0,
        "iou": {n: float(v) for n, v, ok in zip(names, iou, present, strict=True) if ok},
        "pixels": int(total),
        # what predicting the most frequent true class everywhere would score
        "majority_accuracy": float(matrix.sum(1).max() / total) if total else 0.0,
    }


def segmentation_objective(model: Any) -> tuple[str, Any]:
    """(name, objective) of the model's first per-query classification objective."""
    from mmcore_perceiver.objectives import PerQueryClassification

    for name, objective in model.objectives.items():
        if isinstance(objective, PerQueryClassification):
            return name, objective
    raise ValueError("segmentation needs a model with a per-query-classification objective; "
                     f"this one has {sorted(model.objectives)}")


def evaluate_segmentation(model: Any, dataset: Any = None, *, batch_size: int = 64,
                          limit: int | None = None) -> dict[str, Any]:
    """Per-pixel accuracy and mean IoU of ``model`` (a MultimodalModel or a checkpoint
    path) on ``dataset`` (default: the spec's ``data:`` at its ``eval`` split)."""
    from mmcore.data import EVAL, Collator, spec_dataset
    from mmcore.evaluate import resolve_model

    model = resolve_model(model)
    _, objective = segmentation_objective(model)
    head, target = objective.cfg.head, objective.cfg.target
    data = dataset if dataset is not None else spec_dataset(model.spec, EVAL)
    count = len(data) if limit is None else min(limit, len(data))
    collate = Collator.for_model(model)
    num_classes = model.heads[head].out_features
    matrix = torch.zeros(num_classes, num_classes, dtype=torch.long)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, count, batch_size):
                batch = collate([data[i] for i in range(start, min(start + batch_size, count))])
                logits = model(batch).heads[head]  # (B, Q, C)
                truth = batch[target].reshape(logits.shape[:2])
                matrix += confusion(logits.argmax(-1).cpu(), truth,
                                    num_classes, objective.cfg.ignore_index)
    finally:
        model.train(was_training)
    inner = getattr(data, "dataset", None)  # mmcore eval's --limit wraps the dataset
    names = getattr(data, "segmentation_classes", getattr(inner, "segmentation_classes", None))
    return {"task": "segmentation", "items": count, **metrics(matrix, names)}


class SegmentationTask:
    """``mmcore eval RUN --task segmentation``: :func:`evaluate_segmentation` on the
    spec's evaluation split (or ``--data``)."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """No options of its own: ``--limit``, ``--batch-size``, ``--data`` are eval's."""

    def run(self, model: Any, data: Any, options: Any) -> dict[str, Any]:
        if data is None:
            raise ValueError("segmentation needs data with per-pixel targets; the spec has "
                             "no 'data:' (pass --data)")
        return evaluate_segmentation(model, data, batch_size=options.batch_size,
                                     limit=options.limit)

"""Objectives over per-query outputs: one target value per output query.

A target such as a ``(B, H, W)`` mask is read row-major, so target cell ``h * W + w``
pairs with query ``h * W + w`` (the order every 2-D query builder uses).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from mmcore.builder import BuildContext
from mmcore.contract import Batch, ModelOutput, Objective
from mmcore.registry import ComponentConfig


class PerQueryClassificationConfig(ComponentConfig):
    head: str
    #: batch key of the integer targets, (B, Q) or a grid (B, H, W) flattened row-major
    target: str = "mask"
    #: target value that is not scored
    ignore_index: int = -100
    label_smoothing: float = Field(0.0, ge=0, lt=1)


class PerQueryRegressionConfig(ComponentConfig):
    head: str
    #: batch key of the float targets, (B, Q, K) or a grid (B, H, W, K) flattened row-major
    target: str = "target"
    loss: Literal["mse", "l1"] = "mse"


def _per_query_target(output: ModelOutput, batch: Batch, head: str, target: str,
                      values: int) -> tuple[Tensor, Tensor]:
    """(head output (B, Q, C), target flattened to (B, Q[, K])); ValueError naming both
    when the target's cells do not match the head's queries."""
    if target not in batch:
        raise ValueError(f"batch has no {target!r} targets for head {head!r}; its keys are "
                         f"{sorted(batch)}")
    predicted = output.heads[head]
    if predicted.dim() != 3:
        raise ValueError(f"head {head!r} gives shape {tuple(predicted.shape)}, not per-query "
                         "outputs (B, Q, C); use a query-classifier or query-regressor head")
    truth = torch.as_tensor(batch[target]).to(predicted.device)
    b, q = predicted.shape[:2]
    keep = truth.dim() - values  # leading dims: batch and the grid
    cells = truth.shape[1:keep].numel() if keep > 1 else 1
    if truth.shape[0] != b or cells != q:
        raise ValueError(f"target {target!r} has shape {tuple(truth.shape)}: {cells} cells per "
                         f"item, but head {head!r} gives {q} queries; the query builder must "
                         "give one query per target cell")
    return predicted, truth.reshape(b, q, *truth.shape[keep:])


class PerQueryClassification(Objective):
    """Cross-entropy of per-query logits (B, Q, C) against integer targets (B, Q); reports
    per-query accuracy over the scored targets."""

    def __init__(self, cfg: PerQueryClassificationConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        logits, target = _per_query_target(output, batch, self.cfg.head, self.cfg.target, 0)
        target = target.long()
        loss = F.cross_entropy(logits.transpose(1, 2), target,  # (B, C, Q) vs (B, Q)
                               ignore_index=self.cfg.ignore_index,
                               label_smoothing=self.cfg.label_smoothing)
        scored = target != self.cfg.ignore_index
        hits = (logits.argmax(-1) == target) & scored
        accuracy = hits.sum() / scored.sum().clamp(min=1)
        return {"loss": loss, "accuracy": accuracy.float()}


class PerQueryRegression(Objective):
    """Mean squared (or absolute) error of per-query values (B, Q, K) against targets."""

    def __init__(self, cfg: PerQueryRegressionConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        predicted, target = _per_query_target(output, batch, self.cfg.head, self.cfg.target, 1)
        target = target.to(predicted.dtype)
        if target.shape != predicted.shape:
            raise ValueError(f"target {self.cfg.target!r} gives {target.shape[-1]} values per "
                             f"query but head {self.cfg.head!r} gives {predicted.shape[-1]}")
        loss_fn = F.mse_loss if self.cfg.loss == "mse" else F.l1_loss
        return {"loss": loss_fn(predicted, target)}


def _check_head(head: str, ctx: BuildContext) -> None:
    if head not in ctx.heads:
        raise ValueError(f"no head named {head!r}; heads are {sorted(ctx.heads)}")


def build_per_query_classification(cfg: PerQueryClassificationConfig,
                                   ctx: BuildContext) -> PerQueryClassification:
    _check_head(cfg.head, ctx)
    return PerQueryClassification(cfg)


def build_per_query_regression(cfg: PerQueryRegressionConfig,
                               ctx: BuildContext) -> PerQueryRegression:
    _check_head(cfg.head, ctx)
    return PerQueryRegression(cfg)


def example_classification(module: PerQueryClassification, batch_size: int,
                           generator: torch.Generator) -> tuple[ModelOutput, dict[str, Tensor]]:
    """Per-query logits (B, 4, 3) and a (B, 2, 2) grid of targets, for the conformance suite."""
    logits = torch.randn(batch_size, 4, 3, generator=generator)
    target = torch.randint(0, 3, (batch_size, 2, 2), generator=generator)
    output = ModelOutput(tokens={}, embeddings={}, heads={module.cfg.head: logits})
    return output, {module.cfg.target: target}


def example_regression(module: PerQueryRegression, batch_size: int,
                       generator: torch.Generator) -> tuple[ModelOutput, dict[str, Tensor]]:
    """Per-query values (B, 4, 2) and matching targets, for the conformance suite."""
    values = torch.randn(batch_size, 4, 2, generator=generator)
    target = torch.randn(batch_size, 4, 2, generator=generator)
    output = ModelOutput(tokens={}, embeddings={}, heads={module.cfg.head: values})
    return output, {module.cfg.target: target}

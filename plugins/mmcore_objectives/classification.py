"""Classification: a linear (or MLP) head on a pooled embedding, trained with cross-entropy."""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.contract import Batch, FusionOutput, Head, ModelOutput, Objective
from mmcore.cost import Cost, CostContext, Shape, linear, norm, with_out
from mmcore.registry import ComponentConfig


class ClassifierConfig(ComponentConfig):
    num_classes: int = Field(gt=0)
    #: which pooled embedding to classify ("fused" or a modality name)
    input: str = "fused"
    hidden: int | None = Field(None, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)


class Classifier(Head):
    """embeddings[input]: (B, E) -> logits (B, num_classes)."""

    def __init__(self, cfg: ClassifierConfig, in_width: int) -> None:
        super().__init__()
        self.input = cfg.input
        self.out_features = cfg.num_classes
        layers: list[nn.Module] = [nn.LayerNorm(in_width), nn.Dropout(cfg.dropout)]
        if cfg.hidden:
            layers += [nn.Linear(in_width, cfg.hidden), nn.GELU()]
        layers.append(nn.Linear(cfg.hidden or in_width, cfg.num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, fused: FusionOutput) -> Tensor:
        if self.input not in fused.embeddings:
            raise ValueError(f"classifier input {self.input!r} is missing from this batch's "
                             f"embeddings {sorted(fused.embeddings)}")
        return self.net(fused.embeddings[self.input])


def build_classifier(cfg: ClassifierConfig, ctx: BuildContext) -> Classifier:
    if cfg.input not in ctx.embedding_widths:
        raise ValueError(f"input {cfg.input!r} is not an embedding the fusion gives: "
                         f"{sorted(ctx.embedding_widths)}")
    return Classifier(cfg, ctx.embedding_widths[cfg.input])


def classifier_cost(cfg: ClassifierConfig, ctx: CostContext) -> Cost:
    """LayerNorm, optional hidden layer, linear to the classes (one pooled vector)."""
    if cfg.input not in ctx.embedding_widths:
        raise ValueError(f"input {cfg.input!r} is not an embedding the fusion gives: "
                         f"{sorted(ctx.embedding_widths)}")
    width = ctx.embedding_widths[cfg.input]
    cost = norm(1, width)
    if cfg.hidden:
        cost = cost + linear(1, width, cfg.hidden)
    cost = cost + linear(1, cfg.hidden or width, cfg.num_classes)
    return with_out(cost, Shape(1, cfg.num_classes))


class ClassificationConfig(ComponentConfig):
    head: str
    target: str = "label"
    label_smoothing: float = Field(0.0, ge=0, lt=1)


class Classification(Objective):
    """Cross-entropy of ``heads[head]`` against ``batch[target]``; reports accuracy."""

    def __init__(self, cfg: ClassificationConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        if self.cfg.target not in batch:
            raise ValueError(f"batch has no {self.cfg.target!r} labels for classification")
        logits = output.heads[self.cfg.head]
        target = batch[self.cfg.target].to(logits.device)
        loss = F.cross_entropy(logits, target, label_smoothing=self.cfg.label_smoothing)
        return {"loss": loss, "accuracy": (logits.argmax(-1) == target).float().mean()}


def build_classification(cfg: ClassificationConfig, ctx: BuildContext) -> Classification:
    if cfg.head not in ctx.heads:
        raise ValueError(f"no head named {cfg.head!r}; heads are {sorted(ctx.heads)}")
    return Classification(cfg)


def classification_cost(cfg: ClassificationConfig, ctx: CostContext) -> Cost:
    """No parameters; the cross-entropy is element-wise work."""
    return Cost()

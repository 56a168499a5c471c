"""Contrastive objective over any list of modality pairs (CLIP, ImageBind, SigLIP).

``loss: softmax`` is CLIP's symmetric InfoNCE; ``loss: sigmoid`` is SigLIP's pairwise sigmoid
loss with a learnable logit bias. Both run through the ``contrastive_loss`` kernel op chosen at
build time (chunked or Triton by default: no batch-by-batch logits matrix is kept).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.contract import Batch, ModelOutput, Objective
from mmcore.kernels import KernelSet
from mmcore.kernels.contrastive import contrastive_accuracy
from mmcore.registry import ComponentConfig

#: initial temperature 1 / exp(logit_scale) per loss: CLIP's 0.07, SigLIP's 1 / 10
DEFAULT_TEMPERATURE = {"softmax": 0.07, "sigmoid": 0.1}


class ContrastiveConfig(ComponentConfig):
    #: pairs of embedding names, e.g. [[image, text], [audio, text]]
    pairs: list[tuple[str, str]] = Field(min_length=1)
    #: softmax: CLIP's symmetric InfoNCE; sigmoid: SigLIP's pairwise sigmoid loss
    loss: Literal["softmax", "sigmoid"] = "softmax"
    #: initial temperature; None: 0.07 for softmax (CLIP), 0.1 for sigmoid (SigLIP, scale 10)
    init_temperature: float | None = Field(None, gt=0)
    #: sigmoid only: initial logit bias (SigLIP: -10)
    init_logit_bias: float = -10.0
    #: learn the logit scale (and, for sigmoid, the logit bias)
    learnable_temperature: bool = True
    #: upper clamp of the logit scale exp(t) (CLIP: 100)
    max_logit_scale: float = Field(100.0, gt=0)

    @field_validator("pairs")
    @classmethod
    def _distinct(cls, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        for a, b in pairs:
            if a == b:
                raise ValueError(f"pair ({a}, {b}) contrasts a modality with itself")
        return pairs

    def temperature(self) -> float:
        """The initial temperature: the configured one or the loss's default."""
        return self.init_temperature or DEFAULT_TEMPERATURE[self.loss]


class Contrastive(Objective):
    """Mean contrastive loss over the configured pairs present in the output."""

    def __init__(self, cfg: ContrastiveConfig, *, kernels: KernelSet) -> None:
        super().__init__()
        self.cfg = cfg
        self.kernels = kernels  # the model's KernelSet: a re-selection reaches this loss too
        init = torch.tensor(math.log(1.0 / cfg.temperature()))
        self.logit_scale = nn.Parameter(init, requires_grad=cfg.learnable_temperature)
        self.logit_bias: nn.Parameter | None = None
        if cfg.loss == "sigmoid":
            self.logit_bias = nn.Parameter(torch.tensor(cfg.init_logit_bias),
                                           requires_grad=cfg.learnable_temperature)

    def scale(self) -> Tensor:
        return self.logit_scale.exp().clamp(max=self.cfg.max_logit_scale)

    def pair_loss(self, a: Tensor, b: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
        """(loss, top-1 accuracy of a -> b) for (B, E) embeddings; matching rows are positives."""
        a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
        loss = self.kernels.call("contrastive_loss", a, b, scale, kind=self.cfg.loss,
                                 logit_bias=self.logit_bias)
        return loss, contrastive_accuracy(a, b)

    def forward(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        pairs = [(a, b) for a, b in self.cfg.pairs
                 if a in output.embeddings and b in output.embeddings]
        if not pairs:
            raise ValueError(f"none of the pairs {self.cfg.pairs} is present in this batch "
                             f"(embeddings: {sorted(output.embeddings)})")
        scale = self.scale()
        terms = [self.pair_loss(output.embeddings[a], output.embeddings[b], scale)
                 for a, b in pairs]
        out = {"loss": torch.stack([t[0] for t in terms]).mean(), "logit_scale": scale.detach()}
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias.detach()
        for (a, b), (_, acc) in zip(pairs, terms, strict=True):
            out[f"{a}_{b}_accuracy"] = acc
        return out


def build_contrastive(cfg: ContrastiveConfig, ctx: BuildContext) -> Contrastive:
    for a, b in cfg.pairs:
        missing = [m for m in (a, b) if m not in ctx.embedding_widths]
        if missing:
            raise ValueError(f"pair ({a}, {b}): no embedding named {missing}; the fusion gives "
                             f"{sorted(ctx.embedding_widths)}")
        wa, wb = ctx.embedding_widths[a], ctx.embedding_widths[b]
        if wa != wb:
            raise ValueError(f"pair ({a}, {b}) has widths {wa} and {wb}; set the fusion's "
                             "embed_dim so they match")
    return Contrastive(cfg, kernels=ctx.kernels)

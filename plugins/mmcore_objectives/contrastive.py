"""Contrastive objective over any list of modality pairs (CLIP, ImageBind, SigLIP).

``loss: softmax`` is CLIP's symmetric InfoNCE; ``loss: sigmoid`` is SigLIP's pairwise sigmoid
loss with a learnable logit bias. Both run through the ``contrastive_loss`` kernel op chosen at
build time (chunked or Triton by default: no batch-by-batch logits matrix is kept).

Across data-parallel ranks (``gather``; a single process ignores it):

- ``global`` (open_clip ``gather_with_grad=True``): every rank gathers both embeddings with
  gradients and computes the whole global loss. After DDP averages, the gradients equal the
  one-process full-batch gradients exactly.
- ``local`` (open_clip ``local_loss=True`` with gathered gradients): each rank scores only its
  own rows against all gathered columns, both directions. The mean of the ranks' losses is the
  global loss and, after DDP averages, the gradients equal the full-batch ones; compute per
  rank is B_local x B_global instead of B_global^2 (the softmax form keeps that logits block).
- ``global-no-grad`` (open_clip's default ``gather_with_grad=False``): the gathered rows of
  other ranks are constants. Each rank's loss is the global loss and its gradient is exact for
  its own rows, so after DDP averages, the encoders' update is the full-batch gradient divided
  by the number of ranks (as a learning rate scaled by 1 / world size); the temperature and
  bias, computed from the whole gathered batch on every rank, get the full gradient.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from mmcore import distributed
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
    #: negatives across data-parallel ranks: global | local | global-no-grad (module docstring)
    gather: Literal["global", "local", "global-no-grad"] = "global"

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

    def pair_loss(self, a: Tensor, b: Tensor, scale: Tensor,
                  gather: bool = False) -> tuple[Tensor, Tensor]:
        """(loss, top-1 accuracy of a -> b) for (B, E) embeddings; matching rows are positives.
        ``gather``: take negatives from every rank (the pair must be present on all of them)."""
        a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
        if gather:
            return self._gathered_loss(a, b, scale), contrastive_accuracy(a, b)
        loss = self.kernels.call("contrastive_loss", a, b, scale, kind=self.cfg.loss,
                                 logit_bias=self.logit_bias)
        return loss, contrastive_accuracy(a, b)

    def _on_every_rank(self, output: ModelOutput) -> set[tuple[str, str]]:
        """The pairs every data-parallel rank has in this step (one all_reduce, so all ranks
        then run the same gathers; a pair some rank lacks is scored locally)."""
        if distributed.world_size() == 1:
            return set()
        here = torch.tensor([a in output.embeddings and b in output.embeddings
                             for a, b in self.cfg.pairs], dtype=torch.int32)
        device = next(iter(output.embeddings.values())).device
        here = here.to(device)
        torch.distributed.all_reduce(here, op=torch.distributed.ReduceOp.MIN)
        return {pair for pair, flag in zip(self.cfg.pairs, here.tolist(), strict=True) if flag}

    def _gathered_loss(self, a: Tensor, b: Tensor, scale: Tensor) -> Tensor:
        """The loss of this rank's (B_local, E) rows with the other ranks' rows as negatives."""
        kind, bias = self.cfg.loss, self.logit_bias
        if self.cfg.gather == "local":
            b_all = distributed.gather_with_grad(b)  # (B_global, E)
            offset = distributed.rank() * a.shape[0]
            if kind == "sigmoid":
                return self.kernels.call("contrastive_loss", a, b_all, scale, kind=kind,
                                         logit_bias=bias, row_offset=offset)
            a_all = distributed.gather_with_grad(a)
            target = torch.arange(a.shape[0], device=a.device) + offset
            a_to_b = F.cross_entropy(scale * a @ b_all.t(), target)  # (B_local, B_global)
            b_to_a = F.cross_entropy(scale * b @ a_all.t(), target)
            return (a_to_b + b_to_a) / 2
        gather = (distributed.gather_with_grad if self.cfg.gather == "global"
                  else distributed.gather_no_grad)
        return self.kernels.call("contrastive_loss", gather(a), gather(b), scale, kind=kind,
                                 logit_bias=bias)

    def forward(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        pairs = [(a, b) for a, b in self.cfg.pairs
                 if a in output.embeddings and b in output.embeddings]
        if not pairs:
            raise ValueError(f"none of the pairs {self.cfg.pairs} is present in this batch "
                             f"(embeddings: {sorted(output.embeddings)})")
        scale = self.scale()
        shared = self._on_every_rank(output)
        terms = [self.pair_loss(output.embeddings[a], output.embeddings[b], scale,
                                gather=(a, b) in shared) for a, b in pairs]
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

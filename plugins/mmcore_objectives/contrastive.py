"""Contrastive objective over any list of modality pairs (CLIP, ImageBind, SigLIP).

``loss: softmax`` is CLIP's symmetric InfoNCE; ``loss: sigmoid`` is SigLIP's pairwise sigmoid
loss with a learnable logit bias. Both run through the ``contrastive_loss`` kernel op chosen at
build time (chunked or Triton by default: no batch-by-batch logits matrix is kept).

Across data-parallel ranks (``gather``; a single process, or a pair some rank lacks in this
step, is scored locally). Names as in open_clip's ``ClipLoss``/``SigLipLoss`` and
TorchMultimodal's ``ContrastiveLossWithTemperature``; B_r is rank r's batch, B = sum B_r:

- ``global`` (open_clip ``gather_with_grad=True, local_loss=False``): every rank gathers both
  embeddings with gradients and computes the whole B x B loss (redundantly, the same value on
  every rank). DDP averages gradients over the W ranks, so each rank's loss must be the full
  loss: the gather's backward sums the W ranks' (identical) gradients wrt each rank's rows,
  and DDP's 1 / W brings the sum back to exactly the one-process full-batch gradient.
- ``local`` (open_clip ``local_loss=True`` with ``gather_with_grad=True``): each rank scores
  only its own rows against all gathered columns (the kernel's ``row_offset`` = the rows of
  the ranks before it), softmax in both directions as a_local vs b_all and b_local vs a_all;
  sigmoid over (local rows) x (all columns). The rank's loss is weighted by W * B_r / B, so
  the mean over ranks is exactly the global loss and, after DDP averages, the gradients are
  exactly the full-batch ones. Compute per rank is B_r x B instead of B x B; the softmax form
  needs no B_r x B logits block (three kernel calls, see :meth:`Contrastive._local_softmax`).
- ``global-no-grad`` (open_clip's default ``gather_with_grad=False``): the gathered rows of
  other ranks are constants; only the rank's own slice keeps its gradient. Each rank's loss
  is the global loss and the gradient it computes wrt its own rows is that loss's exact
  partial derivative. What is missing are the cross terms: the other ranks' gradients wrt
  these rows, which ``global`` adds up in the gather's backward. As every rank computes the
  same loss, they are W - 1 copies of the same partial, so after DDP's 1 / W average the
  encoders' update is the full-batch gradient divided by W (as if the learning rate were
  scaled by 1 / W). The temperature and bias, which every rank uses on the whole gathered
  batch, get the full gradient.
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
    #: momentum distillation (ALBEF / BLIP, softmax only): targets are
    #: ``alpha * softmax(teacher similarities) + (1 - alpha) * one-hot``, the teacher being
    #: the embeddings named ``<name><teacher_suffix>`` (a momentum model's); 0: plain targets
    distill_alpha: float = Field(0.0, ge=0, le=1)
    teacher_suffix: str = Field("_momentum", min_length=1)

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


def distilled_targets(a: Tensor, b: Tensor, scale: Tensor, alpha: float) -> Tensor:
    """Soft targets of rows ``a`` against columns ``b`` (teacher embeddings, (B, E)):
    ``alpha * softmax(scale * cos(a, b)) + (1 - alpha) * I``. -> (B, B), rows sum to 1."""
    sim = F.normalize(a.detach().float(), dim=-1) @ F.normalize(b.detach().float(), dim=-1).t()
    eye = torch.eye(sim.shape[0], dtype=sim.dtype, device=sim.device)
    return alpha * torch.softmax(scale.detach().float() * sim, dim=1) + (1 - alpha) * eye


def soft_contrastive_loss(a: Tensor, b: Tensor, scale: Tensor, targets_ab: Tensor,
                          targets_ba: Tensor) -> Tensor:
    """Symmetric InfoNCE with soft targets: mean over both directions of
    ``-sum_j t_ij log softmax_j(scale * cos(a_i, b_j))``. a, b (B, E); targets (B, B)."""
    logits = scale * (F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).t())
    ab = -(targets_ab * torch.log_softmax(logits, dim=1)).sum(1).mean()
    ba = -(targets_ba * torch.log_softmax(logits.t(), dim=1)).sum(1).mean()
    return (ab + ba) / 2


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

    def _distilled(self, output: ModelOutput, a: str, b: str,
                   scale: Tensor) -> tuple[Tensor, Tensor] | None:
        """(loss, accuracy) with momentum-distilled targets; None when distillation is off
        or the output has no teacher embeddings for this pair (then targets are plain)."""
        suffix, alpha = self.cfg.teacher_suffix, self.cfg.distill_alpha
        if alpha == 0 or self.cfg.loss != "softmax":
            return None
        ta, tb = output.embeddings.get(a + suffix), output.embeddings.get(b + suffix)
        if ta is None or tb is None:
            return None
        ea, eb = output.embeddings[a], output.embeddings[b]
        loss = soft_contrastive_loss(ea, eb, scale, distilled_targets(ta, tb, scale, alpha),
                                     distilled_targets(tb, ta, scale, alpha))
        return loss, contrastive_accuracy(F.normalize(ea, dim=-1), F.normalize(eb, dim=-1))

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
        """The loss of this rank's (B_r, E) rows with the other ranks' rows as negatives."""
        sizes = distributed.gathered_sizes(a)  # a and b have the same rows: one exchange
        if self.cfg.gather == "local":
            return self._local_loss(a, b, scale, sizes)
        gather = (distributed.gather_with_grad if self.cfg.gather == "global"
                  else distributed.gather_no_grad)
        return self.kernels.call("contrastive_loss", gather(a, sizes), gather(b, sizes), scale,
                                 kind=self.cfg.loss, logit_bias=self.logit_bias)

    def _local_loss(self, a: Tensor, b: Tensor, scale: Tensor, sizes: list[int]) -> Tensor:
        """This rank's rows vs all gathered columns, weighted by W * B_r / B (rank-mean =
        global loss). A rank without rows still joins the gathers' backward, with weight 0
        (and gives the temperature and bias a zero gradient, as the other ranks give some)."""
        b_all = distributed.gather_with_grad(b, sizes)  # (B, E)
        a_all = distributed.gather_with_grad(a, sizes) if self.cfg.loss == "softmax" else None
        if a.shape[0] == 0:
            keep = [b_all.sum(), scale] + [x.sum() for x in (a_all, self.logit_bias)
                                           if x is not None]  # every rank: same graph
            return 0.0 * torch.stack(keep).sum()
        offset = sum(sizes[:distributed.rank()])
        if a_all is None:
            loss = self.kernels.call("contrastive_loss", a, b_all, scale, kind="sigmoid",
                                     logit_bias=self.logit_bias, row_offset=offset)
        else:
            loss = self._local_softmax(a, b, a_all, b_all, scale, offset)
        return loss * (len(sizes) * a.shape[0] / sum(sizes))

    def _local_softmax(self, a: Tensor, b: Tensor, a_all: Tensor, b_all: Tensor, scale: Tensor,
                       offset: int) -> Tensor:
        """1/2 [mean_i CE(a_i vs b_all) + mean_i CE(b_i vs a_all)] over the local rows i.

        The kernel's softmax loss of local rows vs gathered columns adds a b->a term over the
        local rows only: K(a, b_all) = (A + R) / 2 and K(b, a_all) = (B + R') / 2, where R
        (R') is CE of each local b (a) against the local a (b) rows; K(a, b) = (R' + R) / 2
        on the local block, so K(a, b_all) + K(b, a_all) - K(a, b) = (A + B) / 2 exactly,
        without a B_r x B logits matrix."""
        def k(x: Tensor, y: Tensor, row_offset: int = 0) -> Tensor:
            return self.kernels.call("contrastive_loss", x, y, scale, kind="softmax",
                                     row_offset=row_offset)

        return k(a, b_all, offset) + k(b, a_all, offset) - k(a, b)

    def forward(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        pairs = [(a, b) for a, b in self.cfg.pairs
                 if a in output.embeddings and b in output.embeddings]
        if not pairs:
            raise ValueError(f"none of the pairs {self.cfg.pairs} is present in this batch "
                             f"(embeddings: {sorted(output.embeddings)})")
        scale = self.scale()
        shared = self._on_every_rank(output)
        terms = [self._distilled(output, a, b, scale) or
                 self.pair_loss(output.embeddings[a], output.embeddings[b], scale,
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

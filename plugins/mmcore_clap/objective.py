"""Contrastive loss with one learned logit scale per direction (CLAP's ``logit_scale_a`` and
``logit_scale_t``).

For a pair ``(a, b)`` of L2-normalised embeddings: ``logits_a = s_a a b^T`` ranks the
``b`` items for each ``a`` item and ``logits_b = s_b b a^T`` the other way; the loss is the
mean of the two cross-entropies against the matching rows. (HF ``ClapModel``'s own loss
scores both terms text -> audio, once with each scale; this objective trains both
directions, which is what a symmetric InfoNCE means.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.contract import Batch, ModelOutput, Objective
from mmcore.cost import Cost, CostContext
from mmcore.registry import ComponentConfig


class TwoScaleContrastiveConfig(ComponentConfig):
    #: pairs of embedding names, e.g. [[audio, text]]; the first names the zero-shot pair
    pairs: list[tuple[str, str]] = Field(min_length=1)
    init_temperature: float = Field(0.07, gt=0)
    learnable_temperature: bool = True
    #: upper clamp of each exp(scale); None: no clamp (HF CLAP clamps nothing)
    max_logit_scale: float | None = Field(100.0, gt=0)

    @field_validator("pairs")
    @classmethod
    def _distinct(cls, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        for a, b in pairs:
            if a == b:
                raise ValueError(f"pair ({a}, {b}) contrasts a modality with itself")
        return pairs


class TwoScaleContrastive(Objective):
    """``logit_scale[p] = (log s_a, log s_b)`` for pair p. (P, 2) parameters."""

    def __init__(self, cfg: TwoScaleContrastiveConfig) -> None:
        super().__init__()
        self.cfg = cfg
        init = torch.full((len(cfg.pairs), 2), math.log(1.0 / cfg.init_temperature))
        self.logit_scale = nn.Parameter(init, requires_grad=cfg.learnable_temperature)

    def scales(self) -> Tensor:
        """(P, 2) exp of the learned scales, clamped when configured."""
        scales = self.logit_scale.exp()
        return scales if self.cfg.max_logit_scale is None else scales.clamp(
            max=self.cfg.max_logit_scale)

    def logits(self, output: ModelOutput, pair: int = 0) -> tuple[Tensor, Tensor]:
        """(logits_a (B_a, B_b), logits_b (B_b, B_a)) of pair ``pair``, as HF returns
        ``logits_per_audio`` and ``logits_per_text``."""
        a_name, b_name = self.cfg.pairs[pair]
        a = F.normalize(output.embeddings[a_name], dim=-1)
        b = F.normalize(output.embeddings[b_name], dim=-1)
        scale_a, scale_b = self.scales()[pair]
        return scale_a * (a @ b.t()), scale_b * (b @ a.t())

    def forward(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        present = [i for i, (a, b) in enumerate(self.cfg.pairs)
                   if a in output.embeddings and b in output.embeddings]
        if not present:
            raise ValueError(f"none of the pairs {self.cfg.pairs} is present in this batch "
                             f"(embeddings: {sorted(output.embeddings)})")
        out: dict[str, Tensor] = {}
        losses = []
        for i in present:
            logits_a, logits_b = self.logits(output, i)  # (B, B) each
            target = torch.arange(logits_a.shape[0], device=logits_a.device)
            losses.append((F.cross_entropy(logits_a, target)
                           + F.cross_entropy(logits_b, target)) / 2)
            a, b = self.cfg.pairs[i]
            out[f"{a}_{b}_accuracy"] = (logits_a.argmax(1) == target).float().mean()
        scales = self.scales().detach()
        return {"loss": torch.stack(losses).mean(), **out,
                "logit_scale_a": scales[present[0], 0], "logit_scale_b": scales[present[0], 1]}


def build_two_scale_contrastive(cfg: TwoScaleContrastiveConfig,
                                ctx: BuildContext) -> TwoScaleContrastive:
    for a, b in cfg.pairs:
        missing = [m for m in (a, b) if m not in ctx.embedding_widths]
        if missing:
            raise ValueError(f"pair ({a}, {b}): no embedding named {missing}; the fusion gives "
                             f"{sorted(ctx.embedding_widths)}")
        if ctx.embedding_widths[a] != ctx.embedding_widths[b]:
            raise ValueError(f"pair ({a}, {b}) has widths {ctx.embedding_widths[a]} and "
                             f"{ctx.embedding_widths[b]}; give the fusion one embed_dim")
    return TwoScaleContrastive(cfg)


def two_scale_contrastive_cost(cfg: TwoScaleContrastiveConfig, ctx: CostContext) -> Cost:
    """Two scales per pair; the B x B similarities depend on the batch and are left out."""
    return Cost(params=2 * len(cfg.pairs))

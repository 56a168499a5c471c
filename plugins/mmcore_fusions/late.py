"""Late fusion: each modality is pooled and projected on its own (CLIP's towers).

An optional ``fused`` embedding combines the per-modality embeddings: concatenation, mean,
learned weights (softmax over one learned logit per modality) or attention pooling (a
learned query attends over the modality embeddings). The weighted and attention
combinations renormalise over the modalities a sample has (missing or dropped ones get
no weight); concat and mean need every modality.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.contract import Fusion, FusionOutput, Tokens
from mmcore.cost import Cost, CostContext, linear
from mmcore.layers import pool
from mmcore.registry import ComponentConfig
from mmcore_fusions.common import PoolKind, check_names, fusion_cost, presence, widths_of

Combine = Literal["none", "concat", "mean", "weighted", "attention"]


class LateFusionConfig(ComponentConfig):
    #: shared embedding width; None keeps each modality's own width (no projection)
    embed_dim: int | None = Field(None, gt=0)
    #: modality -> cls | eot | mean; unnamed modalities use ``default_pooling``
    pooling: dict[str, PoolKind] = Field(default_factory=dict)
    default_pooling: PoolKind = "mean"
    projection_bias: bool = False
    #: also emit ``embeddings["fused"]`` combining the modalities present
    combine: Combine = "none"


def embedding_widths(cfg: LateFusionConfig, widths: dict[str, int]) -> dict[str, int]:
    """name -> pooled width, with ``fused`` when ``combine`` is set. Checks the widths."""
    out = {m: cfg.embed_dim or w for m, w in sorted(widths.items())}
    if cfg.combine == "none":
        return out
    if cfg.combine != "concat" and len(set(out.values())) > 1:
        raise ValueError(f"combine: {cfg.combine} needs one width; set embed_dim")
    out["fused"] = sum(out.values()) if cfg.combine == "concat" else next(iter(out.values()))
    return out


class LearnedCombine(nn.Module):
    """Weights over the modality embeddings from ``scores``, renormalised over the
    modalities each sample has. (B, M, E), present (B, M) -> (B, E)."""

    def scores(self, stacked: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def forward(self, stacked: Tensor, present: Tensor) -> Tensor:
        present = present | ~present.any(dim=1, keepdim=True)  # none present: all count
        scores = self.scores(stacked).masked_fill(~present, float("-inf"))  # (B, M)
        weights = torch.softmax(scores, dim=1)
        return (weights.unsqueeze(-1) * stacked).sum(1)


class WeightedCombine(LearnedCombine):
    """Softmax over one learned logit per modality."""

    def __init__(self, *, modalities: int, width: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(modalities))  # equal weights at first

    def scores(self, stacked: Tensor) -> Tensor:
        return self.logits.to(stacked.dtype).expand(stacked.shape[:2])  # (B, M)


class AttentionCombine(LearnedCombine):
    """A learned query attends over the modality embeddings (keys: a linear map of them)."""

    def __init__(self, *, modalities: int, width: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(width) * width**-0.5)
        self.key = nn.Linear(width, width, bias=False)

    def scores(self, stacked: Tensor) -> Tensor:
        keys = self.key(stacked)  # (B, M, E)
        query = self.query.to(keys.dtype).unsqueeze(-1)  # (E, 1)
        return (keys @ query).squeeze(-1) * keys.shape[-1] ** -0.5  # (B, M)


COMBINERS: dict[str, type[LearnedCombine]] = {"weighted": WeightedCombine,
                                              "attention": AttentionCombine}


class LateFusion(Fusion):
    """name: Tokens (B, N, D_m) -> embeddings name: (B, E); no modality sees another."""

    def __init__(self, cfg: LateFusionConfig, widths: dict[str, int]) -> None:
        super().__init__()
        check_names("pooling", cfg.pooling, widths)
        self.cfg = cfg
        self.modalities = sorted(widths)
        self.embedding_widths = embedding_widths(cfg, widths)
        self.projections = nn.ModuleDict({
            m: nn.Linear(w, cfg.embed_dim, bias=cfg.projection_bias) if cfg.embed_dim
            else nn.Identity() for m, w in widths.items()
        })
        for proj in self.projections.values():
            if isinstance(proj, nn.Linear):
                nn.init.normal_(proj.weight, std=proj.in_features**-0.5)
        self.combiner: LearnedCombine | None = None
        if cfg.combine in COMBINERS:
            self.combiner = COMBINERS[cfg.combine](modalities=len(widths),
                                                   width=self.embedding_widths["fused"])

    def forward(self, tokens: dict[str, Tokens]) -> FusionOutput:
        embeddings: dict[str, Tensor] = {}
        for name in sorted(tokens):
            kind = self.cfg.pooling.get(name, self.cfg.default_pooling)
            embeddings[name] = self.projections[name](pool(tokens[name], kind))  # (B, E)
        fused = self._fuse(tokens, embeddings)
        if fused is not None:
            embeddings["fused"] = fused
        return FusionOutput(tokens=dict(tokens), embeddings=embeddings)

    def _fuse(self, tokens: dict[str, Tokens], embeddings: dict[str, Tensor]) -> Tensor | None:
        if self.combiner is not None:
            return self._combine_learned(tokens, embeddings)
        if self.cfg.combine == "none" or len(embeddings) < len(self.modalities):
            return None
        parts = [embeddings[m] for m in self.modalities]
        return torch.cat(parts, dim=-1) if self.cfg.combine == "concat" else torch.stack(
            parts).mean(0)

    def _combine_learned(self, tokens: dict[str, Tokens],
                         embeddings: dict[str, Tensor]) -> Tensor:
        assert self.combiner is not None
        ref = next(iter(embeddings.values()))  # (B, E)
        stacked = torch.stack([embeddings[m] if m in embeddings else torch.zeros_like(ref)
                               for m in self.modalities], dim=1)  # (B, M, E)
        present = torch.stack([presence(tokens[m]) if m in tokens
                               else torch.zeros(ref.shape[0], dtype=torch.bool,
                                                device=ref.device)
                               for m in self.modalities], dim=1)  # (B, M)
        return self.combiner(stacked, present)


def build_late(cfg: LateFusionConfig, ctx: BuildContext) -> LateFusion:
    return LateFusion(cfg, ctx.widths)


def late_cost(cfg: LateFusionConfig, ctx: CostContext) -> Cost:
    """One projection per pooled vector, plus the learned combination's parameters."""
    widths = widths_of(ctx.shapes)
    out = embedding_widths(cfg, widths)
    cost = Cost()
    if cfg.embed_dim:
        for w in widths.values():
            cost = cost + linear(1, w, cfg.embed_dim, cfg.projection_bias)
    if cfg.combine == "weighted":
        cost = cost + Cost(params=len(widths))
    if cfg.combine == "attention":
        e, m = out["fused"], len(widths)
        cost = cost + linear(m, e, e, bias=False) + Cost(params=e, flops=2 * m * e)
    return fusion_cost(cost, out)

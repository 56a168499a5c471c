"""Early fusion: one transformer over the joint token sequence of every modality.

Modalities are concatenated in sorted order, each with a learned modality-type embedding
added (and a projection to the common width where its width differs); the joint mask keeps
padding out of attention. Outputs are split back per modality (their sizes are kept).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.contract import Fusion, FusionOutput, Tokens
from mmcore.cost import Cost, CostContext
from mmcore.layers import TransformerStack, pool
from mmcore.registry import ComponentConfig
from mmcore_fusions.common import (
    PoolKind,
    check_names,
    fusion_cost,
    joint_mask,
    ones_mask,
    projection_cost,
    stack_cost,
    widths_of,
)


class EarlyFusionConfig(ComponentConfig):
    #: common width; None: every modality must already have one width (no projections)
    width: int | None = Field(None, gt=0)
    layers: int = Field(gt=0)
    heads: int = Field(gt=0)
    mlp_ratio: float = Field(4.0, gt=0)
    #: LayerNorm after the last block (pre-norm stacks want it; off matches a post-norm
    #: model's parameter count, e.g. a head that normalises its input anyway)
    final_norm: bool = True
    #: ``embeddings["fused"]``: mean over every real token, or a learned CLS token
    fused_pooling: Literal["mean", "cls"] = "mean"
    #: modality -> pooling of that modality's part of the output (default mean)
    pooling: dict[str, PoolKind] = Field(default_factory=dict)


def common_width(cfg: EarlyFusionConfig, widths: dict[str, int]) -> int:
    """The joint sequence's width: ``cfg.width``, or the modalities' one shared width."""
    if cfg.width is not None:
        return cfg.width
    if len(set(widths.values())) > 1:
        raise ValueError(f"modalities have different widths {widths}; set width to project "
                         "them to a common one")
    return next(iter(widths.values()))


class EarlyFusion(Fusion):
    """name: (B, N_m, D_m) -> joint (B, sum N_m [+1], D) -> tokens name: (B, N_m, D),
    embeddings name: (B, D) and ``fused``: (B, D). Everything attends to everything."""

    def __init__(self, cfg: EarlyFusionConfig, widths: dict[str, int], ctx: BuildContext):
        super().__init__()
        check_names("pooling", cfg.pooling, widths)
        self.cfg = cfg
        self.width = width = common_width(cfg, widths)
        self.projections = nn.ModuleDict({m: nn.Linear(w, width) for m, w in widths.items()
                                          if w != width})
        self.type_embeddings = nn.ParameterDict({
            m: nn.Parameter(torch.randn(width) * 0.02) for m in widths})
        self.cls = (nn.Parameter(torch.randn(1, 1, width) * 0.02)
                    if cfg.fused_pooling == "cls" else None)
        self.encoder = TransformerStack(width=width, layers=cfg.layers, heads=cfg.heads,
                                        kernels=ctx.kernels, mlp_ratio=cfg.mlp_ratio,
                                        final_norm=cfg.final_norm)
        self.embedding_widths = {**{m: width for m in sorted(widths)}, "fused": width}

    def _embed(self, name: str, tokens: Tokens) -> Tensor:
        x = tokens.x  # (B, N_m, D_m)
        if name in self.projections:
            x = self.projections[name](x)  # (B, N_m, D)
        return x + self.type_embeddings[name].to(x.dtype)

    def _joint(self, tokens: dict[str, Tokens], names: list[str]) -> tuple[Tensor, Tensor]:
        x = torch.cat([self._embed(m, tokens[m]) for m in names], dim=1)  # (B, sum N_m, D)
        mask = joint_mask(*(tokens[m].valid() for m in names))
        if self.cls is not None:
            cls = self.cls.to(x.dtype).expand(x.shape[0], -1, -1)  # (B, 1, D)
            x, mask = torch.cat([cls, x], dim=1), joint_mask(ones_mask(cls), mask)
        return x, mask

    def forward(self, tokens: dict[str, Tokens]) -> FusionOutput:
        names = sorted(tokens)
        x, mask = self._joint(tokens, names)
        x = self.encoder(x, mask)  # (B, [1 +] sum N_m, D)
        fused = x[:, 0] if self.cls is not None else pool(Tokens(x, mask), "mean")
        parts = x[:, 1:] if self.cls is not None else x
        sizes = [tokens[m].x.shape[1] for m in names]
        out = {m: Tokens(part, tokens[m].mask)
               for m, part in zip(names, parts.split(sizes, dim=1), strict=True)}
        embeddings = {m: pool(out[m], self.cfg.pooling.get(m, "mean")) for m in names}
        return FusionOutput(tokens=out, embeddings={**embeddings, "fused": fused})


def build_early(cfg: EarlyFusionConfig, ctx: BuildContext) -> EarlyFusion:
    if not ctx.widths:
        raise ValueError("early fusion needs at least one modality")
    return EarlyFusion(cfg, ctx.widths, ctx)


def early_cost(cfg: EarlyFusionConfig, ctx: CostContext) -> Cost:
    """Projections, type embeddings, [CLS] and the joint stack over sum N_m [+ 1] tokens."""
    width = common_width(cfg, widths_of(ctx.shapes))
    cls = int(cfg.fused_pooling == "cls")
    tokens = sum(s.tokens for s in ctx.shapes.values()) + cls
    cost = (projection_cost(ctx.shapes, width)
            + Cost(params=width * (len(ctx.shapes) + cls))
            + stack_cost(tokens, width, cfg.layers, cfg.heads, cfg.mlp_ratio, cfg.final_norm))
    return fusion_cost(cost, {**{m: width for m in sorted(ctx.shapes)}, "fused": width})


"""Bidirectional co-attention (ViLBERT style): two streams, one per modality; in every
layer each stream self-attends, then cross-attends to the other stream's tokens from the
previous layer, then applies its MLP. Both streams keep their own widths.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.contract import Fusion, FusionOutput, Tokens
from mmcore.cost import Cost, CostContext, Shape, norm, transformer_block
from mmcore.layers import TransformerBlock, make_norm
from mmcore.registry import ComponentConfig
from mmcore_fusions.common import PoolKind, check_names, fusion_cost, layer_of, pool_each


class CoAttentionFusionConfig(ComponentConfig):
    #: the two co-attending modalities; None: the model's two modalities
    modalities: list[str] | None = None
    layers: int = Field(gt=0)
    heads: int = Field(gt=0)
    mlp_ratio: float = Field(4.0, gt=0)
    #: modality -> pooling of its stream (default mean)
    pooling: dict[str, PoolKind] = Field(default_factory=dict)
    #: ``fused``: concatenation, or (equal widths) mean or elementwise product (ViLBERT)
    combine: Literal["concat", "mean", "product"] = "concat"

    @field_validator("modalities")
    @classmethod
    def _two(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (len(value) != 2 or value[0] == value[1]):
            raise ValueError(f"co-attention needs two different modalities, got {value}")
        return value


def streams(cfg: CoAttentionFusionConfig, widths: dict[str, int]) -> list[str]:
    """The two co-attending modalities, sorted."""
    names = cfg.modalities or sorted(widths)
    if len(names) != 2:
        raise ValueError(f"co-attention needs two modalities; the model has {sorted(widths)} "
                         "(name two with modalities: [a, b])")
    check_names("modalities", names, widths)
    return sorted(names)


def fused_width(cfg: CoAttentionFusionConfig, a: int, b: int) -> int:
    if cfg.combine == "concat":
        return a + b
    if a != b:
        raise ValueError(f"combine: {cfg.combine} needs equal widths, got {a} and {b}")
    return a


class CoAttentionFusion(Fusion):
    """a (B, Na, Da), b (B, Nb, Db) -> co-attended streams of the same shapes; embeddings
    per modality and ``fused`` (both present)."""

    def __init__(self, cfg: CoAttentionFusionConfig, widths: dict[str, int],
                 ctx: BuildContext) -> None:
        super().__init__()
        check_names("pooling", cfg.pooling, widths)
        self.cfg = cfg
        self.names = a, b = streams(cfg, widths)
        self.blocks = nn.ModuleDict({
            m: nn.ModuleList(
                TransformerBlock(width=widths[m], heads=cfg.heads, kernels=ctx.kernels,
                                 mlp_ratio=cfg.mlp_ratio, cross_width=widths[other])
                for _ in range(cfg.layers))
            for m, other in ((a, b), (b, a))})
        self.final_norms = nn.ModuleDict({m: make_norm("layernorm", widths[m]) for m in (a, b)})
        self.embedding_widths = {**dict(sorted(widths.items())),
                                 "fused": fused_width(cfg, widths[a], widths[b])}

    def co_attend(self, tokens: dict[str, Tokens]) -> dict[str, Tensor]:
        """The streams present, each attending to the other's previous layer (if present)."""
        names = [m for m in self.names if m in tokens]
        xs = {m: tokens[m].x for m in names}  # name: (B, N_m, D_m)
        for i in range(self.cfg.layers):
            xs = {m: self._layer(i, m, xs, tokens) for m in names}
        return {m: self.final_norms[m](x) for m, x in xs.items()}

    def _layer(self, i: int, name: str, xs: dict[str, Tensor],
               tokens: dict[str, Tokens]) -> Tensor:
        other = self.names[1] if name == self.names[0] else self.names[0]
        context = xs.get(other)
        context_mask = tokens[other].valid() if other in tokens else None
        block = layer_of(self.blocks, name, i)
        return block(xs[name], tokens[name].valid(), context=context, context_mask=context_mask)

    def forward(self, tokens: dict[str, Tokens]) -> FusionOutput:
        out = dict(tokens)
        out.update({m: Tokens(x, tokens[m].mask) for m, x in self.co_attend(tokens).items()})
        embeddings = pool_each(out, self.cfg.pooling)
        a, b = self.names
        if a in tokens and b in tokens:
            embeddings["fused"] = self._combine(embeddings[a], embeddings[b])
        return FusionOutput(tokens=out, embeddings=embeddings)

    def _combine(self, a: Tensor, b: Tensor) -> Tensor:
        if self.cfg.combine == "concat":
            return torch.cat([a, b], dim=-1)
        return (a + b) / 2 if self.cfg.combine == "mean" else a * b


def build_co_attention(cfg: CoAttentionFusionConfig, ctx: BuildContext) -> CoAttentionFusion:
    return CoAttentionFusion(cfg, ctx.widths, ctx)


def co_attention_cost(cfg: CoAttentionFusionConfig, ctx: CostContext) -> Cost:
    """Per layer, one block per stream with cross-attention to the other; final norms."""
    widths = {m: s.width for m, s in sorted(ctx.shapes.items())}
    a, b = streams(cfg, widths)
    sa, sb = ctx.shapes[a], ctx.shapes[b]
    cost = Cost()
    for this, other in ((sa, sb), (sb, sa)):
        block = transformer_block(this.tokens, this.width, cfg.heads, cfg.mlp_ratio,
                                  Shape(other.tokens, other.width))
        cost = cost + block.times(cfg.layers) + norm(this.tokens, this.width)
    return fusion_cost(cost, {**widths, "fused": fused_width(cfg, sa.width, sb.width)})

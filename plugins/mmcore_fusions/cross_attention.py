"""One-directional cross-modal attention (BLIP style): a query modality (e.g. text) runs
through a fusion stack whose layers cross-attend to a context modality (e.g. image
patches) every ``every`` layers. Information flows from context to query only.

Outputs: the query and context tokens as they came in, their pooled embeddings, and the
fused query stream as ``tokens["fused"]`` / ``embeddings["fused"]`` (BLIP's image-grounded
text encoder), when both modalities are present.
"""

from __future__ import annotations

from pydantic import Field, model_validator
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.contract import Fusion, FusionOutput, Tokens
from mmcore.cost import Cost, CostContext, Shape, norm, transformer_block
from mmcore.layers import TransformerBlock, make_norm, pool
from mmcore.registry import ComponentConfig
from mmcore_fusions.common import (
    PoolKind,
    check_every,
    check_names,
    fusion_cost,
    has_cross,
    pool_each,
)


class CrossAttentionFusionConfig(ComponentConfig):
    #: the modality that attends (its stream is fused), e.g. text
    query: str
    #: the modality attended to, e.g. image
    context: str
    layers: int = Field(gt=0)
    heads: int = Field(gt=0)
    #: cross-attention in layers every-1, 2*every-1, ... (1: every layer, as BLIP)
    every: int = Field(1, gt=0)
    mlp_ratio: float = Field(4.0, gt=0)
    #: causal self-attention in the query stream (BLIP's image-grounded text decoder)
    causal: bool = False
    #: modality -> pooling (default mean); the fused stream pools like the query modality
    pooling: dict[str, PoolKind] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _distinct(self) -> CrossAttentionFusionConfig:
        if self.query == self.context:
            raise ValueError("query and context must be different modalities")
        return self


class CrossAttentionFusion(Fusion):
    """query (B, Nq, Dq) x context (B, Nc, Dc) -> fused (B, Nq, Dq); embeddings query: (B, Dq),
    context: (B, Dc), fused: (B, Dq)."""

    def __init__(self, cfg: CrossAttentionFusionConfig, widths: dict[str, int],
                 ctx: BuildContext) -> None:
        super().__init__()
        check_names("query/context", [cfg.query, cfg.context], widths)
        check_names("pooling", cfg.pooling, widths)
        check_every(cfg.every, cfg.layers)
        self.cfg = cfg
        width, context_width = widths[cfg.query], widths[cfg.context]
        self.blocks = nn.ModuleList(
            TransformerBlock(width=width, heads=cfg.heads, kernels=ctx.kernels,
                             mlp_ratio=cfg.mlp_ratio,
                             cross_width=context_width if has_cross(i, cfg.every) else None)
            for i in range(cfg.layers))
        self.final_norm = make_norm("layernorm", width)
        self.embedding_widths = {**dict(sorted(widths.items())), "fused": width}

    def fuse(self, query: Tokens, context: Tokens) -> Tensor:
        """The query stream with cross-attention to the context. -> (B, Nq, Dq)"""
        x, mask = query.x, query.valid()
        for block in self.blocks:
            x = block(x, mask, self.cfg.causal, context=context.x, context_mask=context.valid())
        return self.final_norm(x)

    def forward(self, tokens: dict[str, Tokens]) -> FusionOutput:
        out = dict(tokens)
        embeddings = pool_each(tokens, self.cfg.pooling)
        q, c = self.cfg.query, self.cfg.context
        if q in tokens and c in tokens:
            out["fused"] = Tokens(self.fuse(tokens[q], tokens[c]), tokens[q].mask)
            embeddings["fused"] = pool(out["fused"], self.cfg.pooling.get(q, "mean"))
        return FusionOutput(tokens=out, embeddings=embeddings)


def build_cross_attention(cfg: CrossAttentionFusionConfig,
                          ctx: BuildContext) -> CrossAttentionFusion:
    return CrossAttentionFusion(cfg, ctx.widths, ctx)


def cross_attention_cost(cfg: CrossAttentionFusionConfig, ctx: CostContext) -> Cost:
    """The query stream's blocks (with cross-attention where placed) and final norm."""
    check_names("query/context", [cfg.query, cfg.context], ctx.shapes)
    q, c = ctx.shapes[cfg.query], ctx.shapes[cfg.context]
    cost = Cost()
    for i in range(cfg.layers):
        cross: Shape | None = c if has_cross(i, cfg.every) else None
        cost = cost + transformer_block(q.tokens, q.width, cfg.heads, cfg.mlp_ratio, cross)
    cost = cost + norm(q.tokens, q.width)
    widths = {m: s.width for m, s in sorted(ctx.shapes.items())}
    return fusion_cost(cost, {**widths, "fused": q.width})

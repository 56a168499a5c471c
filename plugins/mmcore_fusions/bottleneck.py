"""Attention-bottleneck fusion (MBT, Nagrani et al. 2021).

Each modality has its own stream of transformer layers. From layer ``fusion_layer`` on,
``num_bottlenecks`` shared fusion tokens are appended to every stream; each stream updates
its own copy, and after the layer the copies are averaged across modalities
(:meth:`BottleneckFusion.exchange`). That average is the only place modalities meet, and
the next layer is the first to read it: fusion needs at least two fusion layers.
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.contract import Fusion, FusionOutput, Tokens
from mmcore.cost import Cost, CostContext, norm, transformer_block
from mmcore.layers import TransformerBlock, make_norm
from mmcore.registry import ComponentConfig
from mmcore_fusions.common import (
    PoolKind,
    check_names,
    fusion_cost,
    joint_mask,
    layer_of,
    ones_mask,
    pool_each,
    presence,
    projection_cost,
    widths_of,
)


class BottleneckFusionConfig(ComponentConfig):
    #: common width of the streams; None: the modalities must share one width
    width: int | None = Field(None, gt=0)
    layers: int = Field(gt=0)
    #: first layer (0-based) with bottleneck tokens; ``layers``: no fusion at all
    fusion_layer: int = Field(0, ge=0)
    num_bottlenecks: int = Field(4, ge=0)
    heads: int = Field(gt=0)
    mlp_ratio: float = Field(4.0, gt=0)
    #: modality -> pooling of its stream (default mean)
    pooling: dict[str, PoolKind] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _fusion_layer(self) -> BottleneckFusionConfig:
        if self.fusion_layer > self.layers:
            raise ValueError(f"fusion_layer {self.fusion_layer} exceeds layers {self.layers}")
        if self.num_bottlenecks and self.fusion_layer == self.layers - 1:
            fix = (f"set fusion_layer <= {self.layers - 2}" if self.layers > 1
                   else "use layers >= 2")
            raise ValueError("a single fusion layer exchanges nothing (every stream reads the "
                             "same initial bottleneck tokens, and their average is never "
                             f"read): {fix}, or num_bottlenecks: 0 for separate streams")
        return self

    @property
    def fuses(self) -> bool:
        """Whether any layer carries bottleneck tokens."""
        return self.num_bottlenecks > 0 and self.fusion_layer < self.layers


def stream_width(cfg: BottleneckFusionConfig, widths: dict[str, int]) -> int:
    if cfg.width is not None:
        return cfg.width
    if len(set(widths.values())) > 1:
        raise ValueError(f"modalities have different widths {widths}; set width")
    return next(iter(widths.values()))


class BottleneckFusion(Fusion):
    """name: (B, N_m, D_m) -> tokens name: (B, N_m, D) (bottlenecks dropped), embeddings
    name: (B, D) and ``fused`` (mean of the modality embeddings present): (B, D)."""

    def __init__(self, cfg: BottleneckFusionConfig, widths: dict[str, int],
                 ctx: BuildContext) -> None:
        super().__init__()
        check_names("pooling", cfg.pooling, widths)
        self.cfg = cfg
        width = stream_width(cfg, widths)
        self.projections = nn.ModuleDict({m: nn.Linear(w, width) for m, w in widths.items()
                                          if w != width})
        self.streams = nn.ModuleDict({
            m: nn.ModuleList(TransformerBlock(width=width, heads=cfg.heads, kernels=ctx.kernels,
                                              mlp_ratio=cfg.mlp_ratio)
                             for _ in range(cfg.layers))
            for m in widths})
        self.final_norms = nn.ModuleDict({m: make_norm("layernorm", width) for m in widths})
        self.bottleneck = (nn.Parameter(torch.randn(cfg.num_bottlenecks, width) * 0.02)
                           if cfg.fuses else None)
        self.embedding_widths = {**{m: width for m in sorted(widths)}, "fused": width}

    def exchange(self, copies: dict[str, Tensor], present: dict[str, Tensor]) -> dict[str, Tensor]:
        """Average each modality's bottleneck copy ``(B, K, D)`` over the modalities a sample
        has (``present``: (B,) bool each); every stream continues from that average."""
        stacked = torch.stack(list(copies.values()))  # (M, B, K, D)
        has = torch.stack([present[m] for m in copies])  # (M, B)
        has = has | ~has.any(0, keepdim=True)  # a sample with none: every copy counts
        weights = has.to(stacked.dtype) / has.sum(0, keepdim=True)  # (M, B)
        mean = torch.einsum("mb,mbkd->bkd", weights, stacked)  # (B, K, D)
        return {m: mean for m in copies}

    def _layer(self, i: int, xs: dict[str, Tensor], masks: dict[str, Tensor],
               zs: dict[str, Tensor] | None) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
        if zs is None:
            return {m: layer_of(self.streams, m, i)(x, masks[m]) for m, x in xs.items()}, None
        new_xs, copies = {}, {}
        for m, x in xs.items():
            joint = torch.cat([x, zs[m]], dim=1)  # (B, N_m + K, D)
            block = layer_of(self.streams, m, i)
            out = block(joint, joint_mask(masks[m], ones_mask(zs[m])))
            new_xs[m], copies[m] = out[:, : x.shape[1]], out[:, x.shape[1]:]  # (B, K, D)
        return new_xs, copies

    def run(self, tokens: dict[str, Tokens]) -> dict[str, Tensor]:
        """The streams through every layer. -> name: (B, N_m, D) after the final norms."""
        xs = {m: self.projections[m](t.x) if m in self.projections else t.x
              for m, t in sorted(tokens.items())}
        masks = {m: t.valid() for m, t in tokens.items()}
        present = {m: presence(t) for m, t in tokens.items()}
        zs: dict[str, Tensor] | None = None
        for i in range(self.cfg.layers):
            if i == self.cfg.fusion_layer and self.bottleneck is not None:
                ref = next(iter(xs.values()))
                z = self.bottleneck.to(ref.dtype).expand(ref.shape[0], -1, -1)  # (B, K, D)
                zs = {m: z for m in xs}
            xs, copies = self._layer(i, xs, masks, zs)
            if copies is not None and i < self.cfg.layers - 1:  # the last average is unread
                zs = self.exchange(copies, present)
        return {m: self.final_norms[m](x) for m, x in xs.items()}

    def forward(self, tokens: dict[str, Tokens]) -> FusionOutput:
        out = {m: Tokens(x, tokens[m].mask) for m, x in self.run(tokens).items()}
        embeddings = pool_each(out, self.cfg.pooling)
        embeddings["fused"] = torch.stack(list(embeddings.values())).mean(0)
        return FusionOutput(tokens=out, embeddings=embeddings)


def build_bottleneck(cfg: BottleneckFusionConfig, ctx: BuildContext) -> BottleneckFusion:
    if not ctx.widths:
        raise ValueError("bottleneck fusion needs at least one modality")
    return BottleneckFusion(cfg, ctx.widths, ctx)


def bottleneck_cost(cfg: BottleneckFusionConfig, ctx: CostContext) -> Cost:
    """Per modality: its blocks (N_m tokens before ``fusion_layer``, N_m + K after) and a
    final norm; projections, the bottleneck tokens and their averaging."""
    width = stream_width(cfg, widths_of(ctx.shapes))
    k = cfg.num_bottlenecks if cfg.fuses else 0
    exchange = Cost(flops=2 * len(ctx.shapes) * k * width)  # the weighted average
    cost = (projection_cost(ctx.shapes, width) + Cost(params=k * width)
            + exchange.times(cfg.layers - cfg.fusion_layer - 1 if k else 0))
    for shape in ctx.shapes.values():
        early = transformer_block(shape.tokens, width, cfg.heads, cfg.mlp_ratio)
        fused = transformer_block(shape.tokens + k, width, cfg.heads, cfg.mlp_ratio)
        cost = (cost + early.times(cfg.fusion_layer)
                + fused.times(cfg.layers - cfg.fusion_layer) + norm(shape.tokens, width))
    return fusion_cost(cost, {**{m: width for m in sorted(ctx.shapes)}, "fused": width})

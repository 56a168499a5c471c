"""Perceiver fusion: the latent array cross-attends to every modality's tokens at once.

Each modality is padded to one common channel width with its own learned padding
(Perceiver IO), so the latents can tell modalities apart; modalities are concatenated
in sorted order with their masks, and learned output queries decode the latents.

The latents themselves are an output too: ``FusionOutput.latents`` (B, M, width) and their
mean ``embeddings["latents"]``, which query decoder heads (``mmcore_perceiver``) read. With
``num_outputs: 0`` the fusion has no decoder of its own and ``fused`` is the latents.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from mmcore.backbone import LatentBackbone
from mmcore.builder import BuildContext
from mmcore.contract import Fusion, FusionOutput, Tokens
from mmcore.cost import Cost, CostContext, Shape, attention, linear, mlp, norm
from mmcore.registry import ComponentConfig
from mmcore_fusions.common import fusion_cost, stack_cost


class PerceiverFusionConfig(ComponentConfig):
    width: int = Field(gt=0)
    num_latents: int = Field(gt=0)
    layers: int = Field(gt=0)
    heads: int = Field(gt=0)
    cross_heads: int = Field(1, gt=0)
    #: learned output queries of the built-in decoder; 0: none (decode with query heads)
    num_outputs: int = Field(1, ge=0)
    mlp_ratio: float = Field(4.0, gt=0)
    #: every modality gets at least this many learned padding channels
    min_padding: int = Field(4, ge=0)
    #: MLP ratio of the input cross-attention block (default: ``mlp_ratio``)
    cross_mlp_ratio: float | None = Field(None, gt=0)
    #: query-key channels of the input cross-attention: the latent width, or the input
    #: width (Hugging Face's ``cross_attention_shape_for_attention: kv``)
    cross_channels: Literal["latents", "inputs"] = "latents"
    #: the latents' residual around the input cross-attention (``use_query_residual``)
    query_residual: bool = True
    #: how many times the latent stack runs, weights shared (``num_blocks``)
    repeats: int = Field(1, gt=0)
    #: a LayerNorm after the latent stack (Hugging Face's Perceiver has none)
    final_norm: bool = True
    act: Literal["gelu", "gelu_tanh", "quick_gelu", "relu", "silu"] = "gelu"


class PerceiverFusion(Fusion):
    """name: (B, N_m, D_m) -> tokens["fused"]: (B, Q, width), embeddings["fused"]: (B, width)."""

    def __init__(self, cfg: PerceiverFusionConfig, widths: dict[str, int], ctx: BuildContext):
        super().__init__()
        self.input_width = max(widths.values()) + cfg.min_padding
        self.padding = nn.ParameterDict({
            m: nn.Parameter(torch.randn(self.input_width - w) * 0.02)
            for m, w in widths.items() if self.input_width > w
        })
        qk = self.input_width if cfg.cross_channels == "inputs" else None
        self.backbone = LatentBackbone(
            input_width=self.input_width, width=cfg.width, num_latents=cfg.num_latents,
            layers=cfg.layers, heads=cfg.heads, cross_heads=cfg.cross_heads,
            kernels=ctx.kernels, mlp_ratio=cfg.mlp_ratio, act=cfg.act,
            cross_mlp_ratio=cfg.cross_mlp_ratio, cross_qk_width=qk,
            query_residual=cfg.query_residual, repeats=cfg.repeats, final_norm=cfg.final_norm,
            decoder=cfg.num_outputs > 0)
        self.queries: nn.Parameter | None = None
        if cfg.num_outputs:
            self.queries = nn.Parameter(torch.randn(cfg.num_outputs, cfg.width) * 0.02)
        self.embedding_widths = {"fused": cfg.width, "latents": cfg.width}

    def _pad(self, name: str, tokens: Tokens) -> Tokens:
        x = tokens.x  # (B, N, D_m)
        if name in self.padding:
            pad = self.padding[name].to(x.dtype).expand(*x.shape[:2], -1)
            x = torch.cat([x, pad], dim=-1)  # (B, N, input_width)
        return Tokens(x, tokens.valid())

    def forward(self, tokens: dict[str, Tokens]) -> FusionOutput:
        padded = [self._pad(name, tokens[name]) for name in sorted(tokens)]
        joint = Tokens(torch.cat([t.x for t in padded], 1),
                       torch.cat([t.valid() for t in padded], 1))  # (B, sum N, input_width)
        b = joint.x.shape[0]
        latents = self.backbone.encode(joint)  # (B, M, D)
        out = latents
        if self.queries is not None:
            out = self.backbone.decode(latents, self.queries.unsqueeze(0).expand(b, -1, -1))
        return FusionOutput(tokens={"fused": Tokens(out)}, latents=Tokens(latents),
                            embeddings={"fused": out.mean(1), "latents": latents.mean(1)})


def build_perceiver(cfg: PerceiverFusionConfig, ctx: BuildContext) -> PerceiverFusion:
    if not ctx.widths:
        raise ValueError("perceiver fusion needs at least one modality")
    return PerceiverFusion(cfg, ctx.widths, ctx)


def cross_attention_block_cost(queries: int, inputs: Shape, width: int, heads: int,
                               mlp_ratio: float, qk_width: int | None = None,
                               v_width: int | None = None) -> Cost:
    """:class:`mmcore.backbone.CrossAttentionBlock`: query and input norms, attention, MLP."""
    qk = qk_width or width
    v = v_width or qk
    if qk == v == width:
        attn = attention(queries, inputs.tokens, width, heads, kv_width=inputs.width)
    else:  # q, k, v and output projections of their own widths, and the two matmuls
        attn = (linear(queries, width, qk) + linear(inputs.tokens, inputs.width, qk)
                + linear(inputs.tokens, inputs.width, v) + linear(queries, v, width)
                + Cost(flops=2 * queries * inputs.tokens * (qk + v),
                       attention_scores=queries * inputs.tokens))
    return (norm(queries, width) + norm(inputs.tokens, inputs.width) + attn
            + norm(queries, width) + mlp(queries, width, int(width * mlp_ratio)))


def perceiver_cost(cfg: PerceiverFusionConfig, ctx: CostContext) -> Cost:
    """Learned padding, latents, encoder cross-attention over sum N_m inputs, the latent
    stack, output queries and the decoder cross-attention."""
    input_width = max(s.width for s in ctx.shapes.values()) + cfg.min_padding
    inputs = Shape(sum(s.tokens for s in ctx.shapes.values()), input_width)
    padding = sum(input_width - s.width for s in ctx.shapes.values())
    m, d = cfg.num_latents, cfg.width
    qk = input_width if cfg.cross_channels == "inputs" else None
    cross_ratio = cfg.mlp_ratio if cfg.cross_mlp_ratio is None else cfg.cross_mlp_ratio
    stack = stack_cost(m, d, cfg.layers, cfg.heads, cfg.mlp_ratio, cfg.final_norm)
    cost = (Cost(params=padding + m * d + cfg.num_outputs * d)
            + cross_attention_block_cost(m, inputs, d, cfg.cross_heads, cross_ratio, qk)
            + stack + Cost(flops=stack.flops * (cfg.repeats - 1),
                           activations=stack.activations * (cfg.repeats - 1)))
    if cfg.num_outputs:
        cost = cost + cross_attention_block_cost(cfg.num_outputs, Shape(m, d), d,
                                                 cfg.cross_heads, cfg.mlp_ratio)
    return fusion_cost(cost, {"fused": d, "latents": d})

"""Gated cross-attention dense layers (Flamingo, Alayrac et al. 2022).

A frozen language model (here a :class:`mmcore.layers.TransformerStack` built inside the
fusion, its input the text modality's tokens) gets a :class:`GatedCrossAttentionBlock`
before every ``every``-th layer, attending to the visual tokens (optionally resampled to
a fixed number by a :class:`PerceiverResampler`). The gates are ``tanh(alpha)`` with
alpha initialised at ``init_gate`` (0: the model is exactly the language model at first).
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.contract import Fusion, FusionOutput, Tokens
from mmcore.cost import Cost, CostContext, Shape, attention, mlp, norm
from mmcore.kernels import KernelSet
from mmcore.layers import MLP, MultiHeadAttention, TransformerStack, make_norm, pool
from mmcore.registry import ComponentConfig
from mmcore_fusions.common import (
    PoolKind,
    check_every,
    check_names,
    fusion_cost,
    has_cross,
    pool_each,
    stack_cost,
)
from mmcore_fusions.resampler import PerceiverResampler, ResamplerParams, resampler_cost


class GatedCrossAttentionBlock(nn.Module):
    """x + tanh(alpha_attn) * xattn(norm(x), visual); x + tanh(alpha_ff) * ffw(norm(x)).
    (B, N, D) x (B, M, Dv) -> (B, N, D). Bias-free projections as in Flamingo."""

    def __init__(self, *, width: int, visual_width: int, heads: int, kernels: KernelSet,
                 mlp_ratio: float = 4.0, init_gate: float = 0.0) -> None:
        super().__init__()
        self.attn_norm = make_norm("layernorm", width)
        self.attn = MultiHeadAttention(width=width, heads=heads, kernels=kernels,
                                       kv_width=visual_width, bias=False)
        self.attn_gate = nn.Parameter(torch.tensor(float(init_gate)))
        self.ff_norm = make_norm("layernorm", width)
        self.ff = MLP(width=width, hidden=int(width * mlp_ratio), bias=False)
        self.ff_gate = nn.Parameter(torch.tensor(float(init_gate)))

    def forward(self, x: Tensor, visual: Tensor, visual_mask: Tensor | None = None) -> Tensor:
        attended = self.attn(self.attn_norm(x), visual, key_padding_mask=visual_mask)
        x = x + self.attn_gate.tanh().to(x.dtype) * attended
        return x + self.ff_gate.tanh().to(x.dtype) * self.ff(self.ff_norm(x))


def gated_block_cost(tokens: int, width: int, visual: Shape, heads: int,
                     mlp_ratio: float) -> Cost:
    """:class:`GatedCrossAttentionBlock`: two norms, attention, MLP and two gates."""
    return (norm(tokens, width) + attention(tokens, visual.tokens, width, heads,
                                            kv_width=visual.width, bias=False)
            + norm(tokens, width) + mlp(tokens, width, int(width * mlp_ratio), bias=False)
            + Cost(params=2))


class GatedXAttnConfig(ComponentConfig):
    #: the language model's modality (its tokens are the LM input), e.g. text
    text: str
    #: the modality the LM attends to, e.g. image
    visual: str
    lm_layers: int = Field(gt=0)
    heads: int = Field(gt=0)
    #: a gated block before layers every-1, 2*every-1, ... of the LM (1: every layer)
    every: int = Field(1, gt=0)
    mlp_ratio: float = Field(4.0, gt=0)
    causal: bool = True
    #: the LM's parameters get requires_grad False (Flamingo trains only the new layers)
    freeze_lm: bool = True
    #: initial gate alpha; tanh(0) = 0 makes the model the plain LM at initialisation
    init_gate: float = 0.0
    #: resample the visual tokens to a fixed number first (None: attend to them all)
    resampler: ResamplerParams | None = None
    #: modality -> pooling (default mean); the LM output pools like the text modality
    pooling: dict[str, PoolKind] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _distinct(self) -> GatedXAttnConfig:
        if self.text == self.visual:
            raise ValueError("text and visual must be different modalities")
        return self


class GatedXAttnFusion(Fusion):
    """text (B, N, D) x visual (B, M, Dv) -> tokens ``fused`` (B, N, D): the LM output;
    embeddings text, visual (resampled if configured) and ``fused``."""

    def __init__(self, cfg: GatedXAttnConfig, widths: dict[str, int], ctx: BuildContext):
        super().__init__()
        check_names("text/visual", [cfg.text, cfg.visual], widths)
        check_names("pooling", cfg.pooling, widths)
        check_every(cfg.every, cfg.lm_layers)
        self.cfg = cfg
        width, visual_width = widths[cfg.text], widths[cfg.visual]
        self.lm = TransformerStack(width=width, layers=cfg.lm_layers, heads=cfg.heads,
                                   kernels=ctx.kernels, mlp_ratio=cfg.mlp_ratio)
        self.lm.requires_grad_(not cfg.freeze_lm)
        self.resampler = (PerceiverResampler(params=cfg.resampler, input_width=visual_width,
                                             width=visual_width, kernels=ctx.kernels)
                          if cfg.resampler is not None else None)
        self.xattn = nn.ModuleDict({
            str(i): GatedCrossAttentionBlock(width=width, visual_width=visual_width,
                                             heads=cfg.heads, kernels=ctx.kernels,
                                             mlp_ratio=cfg.mlp_ratio, init_gate=cfg.init_gate)
            for i in range(cfg.lm_layers) if has_cross(i, cfg.every)})
        self.embedding_widths = {**dict(sorted(widths.items())), "fused": width}

    def language_model(self, text: Tokens, visual: Tokens | None) -> Tensor:
        """The LM over the text tokens, with the gated blocks when ``visual`` is given.
        -> (B, N, D)"""
        x, mask = self.lm.pre_norm(text.x), text.valid()
        for i, block in enumerate(self.lm.blocks):
            if visual is not None and str(i) in self.xattn:
                x = self.xattn[str(i)](x, visual.x, visual.mask)
            x = block(x, mask, self.cfg.causal)
        return self.lm.final_norm(x)

    def forward(self, tokens: dict[str, Tokens]) -> FusionOutput:
        out = dict(tokens)
        visual = tokens.get(self.cfg.visual)
        if visual is not None and self.resampler is not None:
            visual = out[self.cfg.visual] = Tokens(self.resampler(visual))
        embeddings = pool_each(out, self.cfg.pooling)
        if self.cfg.text in tokens:
            text = tokens[self.cfg.text]
            out["fused"] = Tokens(self.language_model(text, visual), text.mask)
            embeddings["fused"] = pool(out["fused"], self.cfg.pooling.get(self.cfg.text, "mean"))
        return FusionOutput(tokens=out, embeddings=embeddings)


def build_gated_xattn(cfg: GatedXAttnConfig, ctx: BuildContext) -> GatedXAttnFusion:
    return GatedXAttnFusion(cfg, ctx.widths, ctx)


def gated_xattn_cost(cfg: GatedXAttnConfig, ctx: CostContext) -> Cost:
    """The LM stack (frozen parameters count too), the resampler and the gated blocks."""
    check_names("text/visual", [cfg.text, cfg.visual], ctx.shapes)
    text, visual = ctx.shapes[cfg.text], ctx.shapes[cfg.visual]
    cost = stack_cost(text.tokens, text.width, cfg.lm_layers, cfg.heads, cfg.mlp_ratio)
    if cfg.resampler is not None:
        cost = cost + resampler_cost(cfg.resampler, visual, visual.width)
        visual = Shape(cfg.resampler.num_latents, visual.width)
    blocks = sum(has_cross(i, cfg.every) for i in range(cfg.lm_layers))
    cost = cost + gated_block_cost(text.tokens, text.width, visual, cfg.heads,
                                   cfg.mlp_ratio).times(blocks)
    widths = {m: s.width for m, s in sorted(ctx.shapes.items())}
    return fusion_cost(cost, {**widths, "fused": text.width})

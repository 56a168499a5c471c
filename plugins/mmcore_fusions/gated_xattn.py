"""Gated cross-attention dense layers (Flamingo, Alayrac et al. 2022).

A frozen language model (here a :class:`mmcore.layers.TransformerStack` built inside the
fusion, its input the text modality's tokens) gets a :class:`GatedCrossAttentionBlock`
before every ``every``-th layer, attending to the visual tokens (optionally resampled to
a fixed number by a :class:`PerceiverResampler`). The gates are ``tanh(alpha)`` with
alpha initialised at ``init_gate`` (0: the model is exactly the language model at first).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.contract import Fusion, FusionOutput, Tokens
from mmcore.cost import Cost, CostContext, Shape, attention, mlp, norm
from mmcore.kernels import KernelSet
from mmcore.layers import MLP, MultiHeadAttention, TransformerStack, make_norm, pool
from mmcore.layers.mlp import SwiGLU
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
    (B, N, D) x (B, M, Dv) -> (B, N, D). Bias-free projections as in Flamingo.

    Options beyond Flamingo's defaults (what Idefics uses): ``norm`` ``rmsnorm``, a SwiGLU
    ``ffw`` of hidden width ``ffn``, ``head_dim`` apart from width / heads, and ``gate``
    ``vector`` (one alpha per channel). ``forward`` may take a per-token mask ``attend
    (B, N, M)`` (interleaved sequences: each token sees only its own image's tokens); tokens
    with no True in it (no image before them) get exactly zero from the attention and,
    unless ``dense_without_media``, skip the dense part too, so they equal the plain LM."""

    def __init__(self, *, width: int, visual_width: int, heads: int, kernels: KernelSet,
                 mlp_ratio: float = 4.0, init_gate: float = 0.0, norm: str = "layernorm",
                 norm_eps: float = 1e-5, ffw: str = "gelu", ffn: int | None = None,
                 head_dim: int | None = None, gate: str = "float") -> None:
        super().__init__()
        hidden = ffn or int(width * mlp_ratio)
        self.attn_norm = make_norm(norm, width, norm_eps)
        self.attn = MultiHeadAttention(width=width, heads=heads, kernels=kernels,
                                       kv_width=visual_width, bias=False,
                                       qk_width=None if head_dim is None else heads * head_dim)
        shape = (width,) if gate == "vector" else ()
        self.attn_gate = nn.Parameter(torch.full(shape, float(init_gate)))
        self.ff_norm = make_norm(norm, width, norm_eps)
        self.ff: nn.Module = (SwiGLU(width=width, hidden=hidden) if ffw == "swiglu"
                              else MLP(width=width, hidden=hidden, act=ffw, bias=False))
        self.ff_gate = nn.Parameter(torch.full(shape, float(init_gate)))

    def forward(self, x: Tensor, visual: Tensor, visual_mask: Tensor | None = None,
                attend: Tensor | None = None, dense_without_media: bool = False) -> Tensor:
        if attend is None:
            attended = self.attn(self.attn_norm(x), visual, key_padding_mask=visual_mask)
            x = x + self.attn_gate.tanh().to(x.dtype) * attended
            return x + self.ff_gate.tanh().to(x.dtype) * self.ff(self.ff_norm(x))
        has_media = attend.any(-1, keepdim=True)  # (B, N, 1)
        attended = masked_cross_attention(self.attn, self.attn_norm(x), visual, attend)
        x = x + self.attn_gate.tanh().to(x.dtype) * attended.masked_fill(~has_media, 0.0)
        dense = self.ff(self.ff_norm(x))
        if not dense_without_media:
            dense = dense.masked_fill(~has_media, 0.0)
        return x + self.ff_gate.tanh().to(x.dtype) * dense


def masked_cross_attention(attn: MultiHeadAttention, x: Tensor, visual: Tensor,
                           attend: Tensor) -> Tensor:
    """``attn``'s projections with a per-query key mask: x (B, N, D) attends to visual
    (B, M, Dv) where ``attend (B, N, M)`` is True. A query with no True key gets an output
    that the caller must discard (it attends to every key, so nothing is NaN); a key it
    may not see has weight exactly 0. -> (B, N, D)"""
    b, n, _ = x.shape
    q = attn.q_proj(x).view(b, n, attn.heads, -1).transpose(1, 2)  # (B, H, N, Dh)
    k = attn.k_proj(visual).view(b, visual.shape[1], attn.heads, -1).transpose(1, 2)
    v = attn.v_proj(visual).view(b, visual.shape[1], attn.heads, -1).transpose(1, 2)
    allowed = attend | ~attend.any(-1, keepdim=True)  # (B, N, M), no all-False row
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])
    return attn.out_proj(out.transpose(1, 2).reshape(b, n, -1))  # (B, N, D)


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

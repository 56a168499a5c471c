"""Factorised space-time encoder (ViViT model 3, "factorised self-attention").

Each block attends within a frame, then across frames, then applies the MLP:
    y = x + SpatialAttn(LN(x))     tokens of one frame attend to each other   (B T, S, D)
    z = y + TemporalAttn(LN(y))    one spatial location attends across frames (B S, T, D)
    out = z + MLP(LN(z))
The grid comes from the config (``time`` = T', ``space`` = H' W', as the tubelet
tokenizer computes them) and is checked against the token count at forward. Tokens are
time-major (frame 0's patches first) and there is no CLS token, as in ViViT model 3.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from mmcore import cost as costs
from mmcore.builder import BuildContext
from mmcore.contract import Encoder, Tokens
from mmcore.cost import Cost, CostContext, Shape
from mmcore.kernels import KernelSet
from mmcore.layers import MLP, MultiHeadAttention, make_norm
from mmcore_video.joint import VideoTransformerConfig


class FactorisedConfig(VideoTransformerConfig):
    #: tubelets along time (T' = num_frames / tubelet_size)
    time: int = Field(gt=0)
    #: tubelets per frame (H' W' = (image_size / patch_size) ** 2)
    space: int = Field(gt=0)


class FactorisedBlock(nn.Module):
    """Spatial attention, temporal attention, MLP; each pre-norm and residual."""

    def __init__(self, *, width: int, heads: int, kernels: KernelSet, mlp_ratio: float,
                 act: str, norm_eps: float) -> None:
        super().__init__()
        self.space_norm = make_norm("layernorm", width, norm_eps)
        self.space_attn = MultiHeadAttention(width=width, heads=heads, kernels=kernels)
        self.time_norm = make_norm("layernorm", width, norm_eps)
        self.time_attn = MultiHeadAttention(width=width, heads=heads, kernels=kernels)
        self.mlp_norm = make_norm("layernorm", width, norm_eps)
        self.mlp = MLP(width=width, hidden=int(width * mlp_ratio), act=act)

    def forward(self, x: Tensor, mask: Tensor | None, time: int, space: int) -> Tensor:
        b, n, d = x.shape
        xs = x.reshape(b * time, space, d)  # (B T, S, D): one frame per row
        ms = None if mask is None else mask.reshape(b * time, space)
        xs = xs + self.space_attn(self.space_norm(xs), key_padding_mask=ms)
        xt = _to_time_major(xs.reshape(b, time, space, d))  # (B S, T, D): one location
        mt = None if mask is None else _to_time_major(mask.reshape(b, time, space))
        xt = xt + self.time_attn(self.time_norm(xt), key_padding_mask=mt)
        x = xt.reshape(b, space, time, d).transpose(1, 2).reshape(b, n, d)
        return x + self.mlp(self.mlp_norm(x))


def _to_time_major(x: Tensor) -> Tensor:
    """(B, T, S, ...) -> (B S, T, ...)."""
    b, t, s = x.shape[:3]
    return x.transpose(1, 2).reshape(b * s, t, *x.shape[3:])


class SpaceTimeFactorised(Encoder):
    """(B, T' S, D) -> (B, T' S, D) through factorised blocks and a final norm."""

    def __init__(self, cfg: FactorisedConfig, width: int, kernels: KernelSet) -> None:
        super().__init__()
        self.out_width = width
        self.time, self.space = cfg.time, cfg.space
        self.blocks = nn.ModuleList(
            FactorisedBlock(width=width, heads=cfg.heads, kernels=kernels,
                            mlp_ratio=cfg.mlp_ratio, act=cfg.act, norm_eps=cfg.norm_eps)
            for _ in range(cfg.layers))
        self.final_norm = make_norm("layernorm", width, cfg.norm_eps) if cfg.final_norm \
            else nn.Identity()

    def forward(self, tokens: Tokens) -> Tokens:
        n = tokens.x.shape[1]
        if n != self.time * self.space:
            hint = " (a CLS token? set cls_token: false)" if n == self.time * self.space + 1 \
                else ""
            raise ValueError(f"space-time-factorised expects time x space = {self.time} x "
                             f"{self.space} = {self.time * self.space} tokens, got {n}{hint}")
        x = tokens.x
        for block in self.blocks:
            x = block(x, tokens.mask, self.time, self.space)
        return Tokens(self.final_norm(x), tokens.mask)


def build_space_time_factorised(cfg: FactorisedConfig,
                                ctx: BuildContext) -> SpaceTimeFactorised:
    return SpaceTimeFactorised(cfg, ctx.encoder_width(cfg.width), ctx.kernels)


def _repeated(cost: Cost, n: int) -> Cost:
    """One module applied to ``n`` groups: FLOPs and activations scale, parameters do not."""
    return Cost(cost.params, cost.flops * n, cost.activations * n,
                cost.attention_scores * n)


def space_time_factorised_cost(cfg: FactorisedConfig, ctx: CostContext) -> Cost:
    """Per block: S x S attention in each of T' frames, T' x T' attention at each of S
    locations, MLP over all tokens. ``attention_scores`` is one layer's spatial pattern
    over all frames, T' S^2 (or S T'^2 if larger)."""
    t, s = cfg.time, cfg.space
    width = cfg.width or (ctx.in_shape.width if ctx.in_shape else None)
    if width is None:
        raise ValueError("the space-time-factorised cost needs its width or its input's")
    n = t * s
    block = (costs.norm(n, width) + _repeated(costs.attention(s, s, width, cfg.heads), t)
             + costs.norm(n, width) + _repeated(costs.attention(t, t, width, cfg.heads), s)
             + costs.norm(n, width) + costs.mlp(n, width, int(width * cfg.mlp_ratio)))
    total = block.times(cfg.layers)
    if cfg.final_norm:
        total = total + costs.norm(n, width)
    return costs.with_out(total, Shape(n, width))


def example_grid_tokens(module: SpaceTimeFactorised, batch_size: int,
                        generator: torch.Generator) -> Tokens:
    """Tokens on the module's grid, the last frame padded in element 1 (conformance)."""
    n = module.time * module.space
    x = torch.randn(batch_size, n, module.out_width, generator=generator)
    mask = torch.ones(batch_size, n, dtype=torch.bool)
    if batch_size > 1:
        mask[1, (module.time - 1) * module.space:] = False
    return Tokens(x, mask)

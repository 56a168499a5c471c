"""A generic transformer encoder (Tokens -> Tokens) that modality plugins register under
their own names with their own defaults (vit, audio-transformer, space-time-joint, ...)."""

from __future__ import annotations

from pydantic import Field

from mmcore.builder import BuildContext
from mmcore.contract import Encoder, Tokens
from mmcore.cost import Cost, CostContext, transformer_stack
from mmcore.kernels import KernelSet
from mmcore.layers import TransformerStack
from mmcore.registry import ComponentConfig


class TransformerEncoderConfig(ComponentConfig):
    """Pre-norm transformer params; ``width`` defaults to the tokenizer's width. Plugins
    subclass this to change defaults (e.g. ``pre_norm`` for CLIP's ViT, ``norm_eps``)."""

    width: int | None = Field(None, gt=0)
    layers: int = Field(gt=0)
    heads: int = Field(gt=0)
    mlp_ratio: float = Field(4.0, gt=0)
    act: str = "gelu"
    norm_eps: float = Field(1e-5, gt=0)
    pre_norm: bool = False
    final_norm: bool = True


class TransformerEncoder(Encoder):
    """(B, N, D) -> (B, N, D): full (non-causal) attention over the real tokens."""

    def __init__(self, cfg: TransformerEncoderConfig, width: int, kernels: KernelSet) -> None:
        super().__init__()
        self.out_width = width
        self.stack = TransformerStack(width=width, layers=cfg.layers, heads=cfg.heads,
                                      kernels=kernels, mlp_ratio=cfg.mlp_ratio, act=cfg.act,
                                      norm_eps=cfg.norm_eps, pre_norm=cfg.pre_norm,
                                      final_norm=cfg.final_norm)

    def forward(self, tokens: Tokens) -> Tokens:
        return Tokens(self.stack(tokens.x, mask=tokens.mask), tokens.mask)


def build_transformer_encoder(cfg: TransformerEncoderConfig,
                              ctx: BuildContext) -> TransformerEncoder:
    return TransformerEncoder(cfg, ctx.encoder_width(cfg.width), ctx.kernels)


def transformer_encoder_cost(cfg: TransformerEncoderConfig, ctx: CostContext) -> Cost:
    """``layers`` pre-norm blocks over the input tokens, with the optional input/final norms."""
    if ctx.in_shape is None:
        raise ValueError("a transformer encoder's cost needs the shape of its input tokens")
    width = cfg.width or ctx.in_shape.width
    return transformer_stack(ctx.in_shape.tokens, width, cfg.layers, cfg.heads, cfg.mlp_ratio,
                             pre_norm=cfg.pre_norm, final_norm=cfg.final_norm)

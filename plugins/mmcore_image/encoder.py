"""Vision Transformer encoder: pre-norm transformer blocks over patch tokens."""

from __future__ import annotations

from pydantic import Field

from mmcore.builder import BuildContext
from mmcore.contract import Encoder, Tokens
from mmcore.cost import Cost, CostContext, transformer_stack
from mmcore.kernels import KernelSet
from mmcore.layers import TransformerStack
from mmcore.registry import ComponentConfig


class TransformerConfig(ComponentConfig):
    """Shared by the ViT here; ``width`` defaults to the tokenizer's width."""

    width: int | None = Field(None, gt=0)
    layers: int = Field(gt=0)
    heads: int = Field(gt=0)
    mlp_ratio: float = Field(4.0, gt=0)
    act: str = "gelu"
    norm_eps: float = Field(1e-5, gt=0)
    pre_norm: bool = True
    final_norm: bool = True


class ViTConfig(TransformerConfig):
    pass


class ViTEncoder(Encoder):
    """(B, N, D) -> (B, N, D), full (non-causal) attention, honouring the token mask."""

    def __init__(self, cfg: TransformerConfig, width: int, kernels: KernelSet) -> None:
        super().__init__()
        self.out_width = width
        self.stack = TransformerStack(width=width, layers=cfg.layers, heads=cfg.heads,
                                      kernels=kernels, mlp_ratio=cfg.mlp_ratio, act=cfg.act,
                                      norm_eps=cfg.norm_eps, pre_norm=cfg.pre_norm,
                                      final_norm=cfg.final_norm)

    def forward(self, tokens: Tokens) -> Tokens:
        return Tokens(self.stack(tokens.x, mask=tokens.mask), tokens.mask)


def build_vit(cfg: ViTConfig, ctx: BuildContext) -> ViTEncoder:
    return ViTEncoder(cfg, ctx.encoder_width(cfg.width), ctx.kernels)


def vit_cost(cfg: ViTConfig, ctx: CostContext) -> Cost:
    """Pre-norm blocks over the tokenizer's tokens (with the optional input and final norms)."""
    if ctx.in_shape is None:
        raise ValueError("vit needs the shape of the tokens it receives")
    width = cfg.width or ctx.in_shape.width
    return transformer_stack(ctx.in_shape.tokens, width, cfg.layers, cfg.heads, cfg.mlp_ratio,
                             pre_norm=cfg.pre_norm, final_norm=cfg.final_norm)

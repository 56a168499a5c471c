"""Text transformer encoder: pre-norm blocks, causal by default (CLIP's text tower)."""

from __future__ import annotations

from pydantic import Field

from mmcore.builder import BuildContext
from mmcore.contract import Encoder, Tokens
from mmcore.cost import Cost, CostContext, transformer_stack
from mmcore.layers import TransformerStack
from mmcore.registry import ComponentConfig


class TextTransformerConfig(ComponentConfig):
    width: int | None = Field(None, gt=0)
    layers: int = Field(gt=0)
    heads: int = Field(gt=0)
    mlp_ratio: float = Field(4.0, gt=0)
    act: str = "gelu"
    norm_eps: float = Field(1e-5, gt=0)
    causal: bool = True
    final_norm: bool = True


class TextTransformer(Encoder):
    """(B, L, D) -> (B, L, D).

    Causal: each token sees itself and earlier ones; padding sits after the real tokens,
    so it never reaches them and the key-padding mask is not needed (the fast path).
    Non-causal: the key-padding mask keeps padding out of every real token.
    """

    def __init__(self, cfg: TextTransformerConfig, width: int, ctx: BuildContext) -> None:
        super().__init__()
        self.causal = cfg.causal
        self.out_width = width
        self.stack = TransformerStack(width=width, layers=cfg.layers, heads=cfg.heads,
                                      kernels=ctx.kernels, mlp_ratio=cfg.mlp_ratio, act=cfg.act,
                                      norm_eps=cfg.norm_eps, final_norm=cfg.final_norm)

    def forward(self, tokens: Tokens) -> Tokens:
        mask = None if self.causal else tokens.mask
        return Tokens(self.stack(tokens.x, mask=mask, causal=self.causal), tokens.mask)


def build_text_transformer(cfg: TextTransformerConfig, ctx: BuildContext) -> TextTransformer:
    return TextTransformer(cfg, ctx.encoder_width(cfg.width), ctx)


def text_transformer_cost(cfg: TextTransformerConfig, ctx: CostContext) -> Cost:
    """Blocks and final norm at full context length; a causal mask still computes every
    score (the kernels mask them), so FLOPs are those of full attention."""
    if ctx.in_shape is None:
        raise ValueError("text-transformer needs the shape of the tokens it receives")
    width = cfg.width or ctx.in_shape.width
    return transformer_stack(ctx.in_shape.tokens, width, cfg.layers, cfg.heads, cfg.mlp_ratio,
                             final_norm=cfg.final_norm)

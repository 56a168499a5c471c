"""Tabular transformer encoder: the core's pre-norm transformer blocks, full attention over
feature tokens, honouring the mask of missing values."""

from __future__ import annotations

from pydantic import Field

from mmcore.builder import BuildContext
from mmcore.contract import Encoder, Tokens
from mmcore.layers import TransformerStack
from mmcore.registry import ComponentConfig


class TabularTransformerConfig(ComponentConfig):
    #: None: the tokenizer's width (a different one is an error)
    width: int | None = Field(None, gt=0)
    layers: int = Field(gt=0)
    heads: int = Field(gt=0)
    mlp_ratio: float = Field(2.0, gt=0)
    act: str = "gelu"


class TabularTransformer(Encoder):
    """(B, N, D) -> (B, N, D); order-free, since every feature token is already distinct."""

    def __init__(self, cfg: TabularTransformerConfig, width: int, ctx: BuildContext) -> None:
        super().__init__()
        self.out_width = width
        self.stack = TransformerStack(width=width, layers=cfg.layers, heads=cfg.heads,
                                      kernels=ctx.kernels, mlp_ratio=cfg.mlp_ratio, act=cfg.act)

    def forward(self, tokens: Tokens) -> Tokens:
        return Tokens(self.stack(tokens.x, mask=tokens.mask), tokens.mask)


def build_tabular_transformer(cfg: TabularTransformerConfig,
                              ctx: BuildContext) -> TabularTransformer:
    return TabularTransformer(cfg, ctx.encoder_width(cfg.width), ctx)

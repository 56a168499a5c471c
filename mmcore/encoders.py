"""A generic transformer encoder (Tokens -> Tokens) that modality plugins register under
their own names with their own defaults (vit, audio-transformer, space-time-joint,
text-transformer, ...)."""

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
    #: each token sees itself and earlier ones (padding must follow the real tokens)
    causal: bool = False


class TransformerEncoder(Encoder):
    """(B, N, D) -> (B, N, D).

    Non-causal: full attention; the key-padding mask keeps padding out of every real token.
    Causal: each token sees itself and earlier ones. Padding sits after the real tokens (the
    contract's layout), so it never reaches them and the key-padding mask is not needed
    (the kernels' fast path).
    """

    def __init__(self, cfg: TransformerEncoderConfig, width: int, kernels: KernelSet) -> None:
        super().__init__()
        self.causal = cfg.causal
        self.out_width = width
        self.stack = TransformerStack(width=width, layers=cfg.layers, heads=cfg.heads,
                                      kernels=kernels, mlp_ratio=cfg.mlp_ratio, act=cfg.act,
                                      norm_eps=cfg.norm_eps, pre_norm=cfg.pre_norm,
                                      final_norm=cfg.final_norm)

    def forward(self, tokens: Tokens) -> Tokens:
        mask = None if self.causal else tokens.mask  # (B, N) or None
        return Tokens(self.stack(tokens.x, mask=mask, causal=self.causal), tokens.mask)


def build_transformer_encoder(cfg: TransformerEncoderConfig,
                              ctx: BuildContext) -> TransformerEncoder:
    return TransformerEncoder(cfg, ctx.encoder_width(cfg.width), ctx.kernels)


def transformer_encoder_cost(cfg: TransformerEncoderConfig, ctx: CostContext) -> Cost:
    """``layers`` pre-norm blocks over the input tokens, with the optional input/final norms.
    A causal mask still computes every score (the kernels mask them), so the FLOPs are
    those of full attention."""
    if ctx.in_shape is None:
        raise ValueError("a transformer encoder's cost needs the shape of its input tokens")
    width = cfg.width or ctx.in_shape.width
    return transformer_stack(ctx.in_shape.tokens, width, cfg.layers, cfg.heads, cfg.mlp_ratio,
                             pre_norm=cfg.pre_norm, final_norm=cfg.final_norm)

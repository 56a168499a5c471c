"""BERT / RoBERTa encoder: post-norm blocks, ``x = norm(x + sublayer(x))``.

Attention is bidirectional and ignores padding keys (the Tokens mask); it runs through
the model's attention kernel like every other mmcore transformer.
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.contract import Encoder, Tokens
from mmcore.cost import Cost, CostContext, transformer_stack
from mmcore.kernels import KernelSet
from mmcore.layers import MLP, MultiHeadAttention
from mmcore.registry import ComponentConfig


class BertEncoderConfig(ComponentConfig):
    width: int | None = Field(None, gt=0)
    layers: int = Field(gt=0)
    heads: int = Field(gt=0)
    mlp_ratio: float = Field(4.0, gt=0)
    act: str = "gelu"
    norm_eps: float = Field(1e-12, gt=0)


class PostNormBlock(nn.Module):
    """norm1(x + attn(x)), then norm2(x + mlp(x)). (B, N, D) -> (B, N, D)."""

    def __init__(self, *, width: int, heads: int, cfg: BertEncoderConfig,
                 kernels: KernelSet) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(width=width, heads=heads, kernels=kernels)
        self.norm1 = nn.LayerNorm(width, eps=cfg.norm_eps)
        self.mlp = MLP(width=width, hidden=int(width * cfg.mlp_ratio), act=cfg.act)
        self.norm2 = nn.LayerNorm(width, eps=cfg.norm_eps)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        x = self.norm1(x + self.attn(x, key_padding_mask=mask))
        return self.norm2(x + self.mlp(x))


class BertEncoder(Encoder):
    """(B, N, D) -> (B, N, D); padded positions are computed but attend only to real keys."""

    def __init__(self, cfg: BertEncoderConfig, width: int, kernels: KernelSet) -> None:
        super().__init__()
        self.out_width = width
        self.layers = nn.ModuleList(
            PostNormBlock(width=width, heads=cfg.heads, cfg=cfg, kernels=kernels)
            for _ in range(cfg.layers))

    def forward(self, tokens: Tokens) -> Tokens:
        x = tokens.x
        for layer in self.layers:
            x = layer(x, tokens.mask)
        return Tokens(x, tokens.mask)


def build_bert_encoder(cfg: BertEncoderConfig, ctx: BuildContext) -> BertEncoder:
    width = ctx.encoder_width(cfg.width)
    if width % cfg.heads:
        raise ValueError(f"width {width} is not divisible by heads {cfg.heads}")
    return BertEncoder(cfg, width, ctx.kernels)


def bert_encoder_cost(cfg: BertEncoderConfig, ctx: CostContext) -> Cost:
    """The same layers as a pre-norm stack without a final norm (norms move, not count)."""
    if ctx.in_shape is None:
        raise ValueError("bert-encoder needs the shape of the tokens it receives")
    width = cfg.width or ctx.in_shape.width
    return transformer_stack(ctx.in_shape.tokens, width, cfg.layers, cfg.heads, cfg.mlp_ratio,
                             final_norm=False)

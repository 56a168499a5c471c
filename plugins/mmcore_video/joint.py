"""Joint space-time encoder (ViViT model 1): full attention over every tubelet token."""

from __future__ import annotations

from pydantic import Field

from mmcore import cost as costs
from mmcore.builder import BuildContext
from mmcore.contract import Encoder, Tokens
from mmcore.cost import Cost, CostContext
from mmcore.kernels import KernelSet
from mmcore.layers import TransformerStack
from mmcore.registry import ComponentConfig


class VideoTransformerConfig(ComponentConfig):
    """Shared by the video encoders; ``width`` defaults to the tokenizer's width."""

    width: int | None = Field(None, gt=0)
    layers: int = Field(gt=0)
    heads: int = Field(gt=0)
    mlp_ratio: float = Field(4.0, gt=0)
    act: str = "gelu"
    norm_eps: float = Field(1e-6, gt=0)
    final_norm: bool = True


class SpaceTimeJoint(Encoder):
    """(B, N, D) -> (B, N, D): pre-norm blocks, each token attends to all others."""

    def __init__(self, cfg: VideoTransformerConfig, width: int, kernels: KernelSet) -> None:
        super().__init__()
        self.out_width = width
        self.stack = TransformerStack(width=width, layers=cfg.layers, heads=cfg.heads,
                                      kernels=kernels, mlp_ratio=cfg.mlp_ratio, act=cfg.act,
                                      norm_eps=cfg.norm_eps, final_norm=cfg.final_norm)

    def forward(self, tokens: Tokens) -> Tokens:
        return Tokens(self.stack(tokens.x, mask=tokens.mask), tokens.mask)


def build_space_time_joint(cfg: VideoTransformerConfig, ctx: BuildContext) -> SpaceTimeJoint:
    return SpaceTimeJoint(cfg, ctx.encoder_width(cfg.width), ctx.kernels)


def space_time_joint_cost(cfg: VideoTransformerConfig, ctx: CostContext) -> Cost:
    """``layers`` blocks over all N tokens (N^2 attention scores per head), final norm."""
    if ctx.in_shape is None:
        raise ValueError("the space-time-joint cost needs the shape of its input tokens")
    n, width = ctx.in_shape.tokens, cfg.width or ctx.in_shape.width
    return costs.transformer_stack(n, width, cfg.layers, cfg.heads, cfg.mlp_ratio,
                                   final_norm=cfg.final_norm)

"""Joint space-time encoder (ViViT model 1): full attention over every tubelet token."""

from __future__ import annotations

from pydantic import Field

from mmcore.builder import BuildContext
from mmcore.cost import Cost, CostContext
from mmcore.encoders import (
    TransformerEncoder,
    TransformerEncoderConfig,
    build_transformer_encoder,
    transformer_encoder_cost,
)


class VideoTransformerConfig(TransformerEncoderConfig):
    """Shared by the video encoders; ``width`` defaults to the tokenizer's width."""

    norm_eps: float = Field(1e-6, gt=0)


def build_space_time_joint(cfg: VideoTransformerConfig, ctx: BuildContext) -> TransformerEncoder:
    """(B, N, D) -> (B, N, D): pre-norm blocks, each token attends to all others."""
    return build_transformer_encoder(cfg, ctx)


def space_time_joint_cost(cfg: VideoTransformerConfig, ctx: CostContext) -> Cost:
    """``layers`` blocks over all N tokens (N^2 attention scores per head), final norm."""
    return transformer_encoder_cost(cfg, ctx)

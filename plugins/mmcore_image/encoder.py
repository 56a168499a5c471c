"""Vision Transformer encoder: the core transformer encoder with CLIP's input norm on."""

from __future__ import annotations

from mmcore.builder import BuildContext
from mmcore.cost import Cost, CostContext
from mmcore.encoders import (
    TransformerEncoder,
    TransformerEncoderConfig,
    build_transformer_encoder,
    transformer_encoder_cost,
)


class ViTConfig(TransformerEncoderConfig):
    pre_norm: bool = True  # CLIP's ln_pre


def build_vit(cfg: ViTConfig, ctx: BuildContext) -> TransformerEncoder:
    """(B, N, D) patch tokens -> (B, N, D), honouring the token mask."""
    return build_transformer_encoder(cfg, ctx)


def vit_cost(cfg: ViTConfig, ctx: CostContext) -> Cost:
    return transformer_encoder_cost(cfg, ctx)

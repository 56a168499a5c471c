"""Text transformer encoder: the core transformer encoder, causal by default (CLIP's text
tower). Parameter names (``stack.blocks.*``, ``stack.final_norm``) are the core's."""

from __future__ import annotations

from mmcore.builder import BuildContext
from mmcore.cost import Cost, CostContext
from mmcore.encoders import (
    TransformerEncoder,
    TransformerEncoderConfig,
    build_transformer_encoder,
    transformer_encoder_cost,
)


class TextTransformerConfig(TransformerEncoderConfig):
    causal: bool = True  # CLIP's text tower; padding follows the real tokens


def build_text_transformer(cfg: TextTransformerConfig, ctx: BuildContext) -> TransformerEncoder:
    """(B, L, D) token embeddings -> (B, L, D); see :class:`TransformerEncoder` for masking."""
    return build_transformer_encoder(cfg, ctx)


def text_transformer_cost(cfg: TextTransformerConfig, ctx: CostContext) -> Cost:
    """Blocks and final norm at full context length (a causal mask computes every score)."""
    return transformer_encoder_cost(cfg, ctx)

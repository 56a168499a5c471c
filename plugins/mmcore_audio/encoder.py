"""Audio transformer encoder: pre-norm blocks with a final LayerNorm (Whisper's encoder)."""

from __future__ import annotations

from mmcore.builder import BuildContext
from mmcore.cost import Cost, CostContext
from mmcore.encoders import (
    TransformerEncoder,
    TransformerEncoderConfig,
    build_transformer_encoder,
    transformer_encoder_cost,
)


class AudioTransformerConfig(TransformerEncoderConfig):
    """``width`` defaults to the tokenizer's width."""


def build_audio_transformer(cfg: AudioTransformerConfig, ctx: BuildContext) -> TransformerEncoder:
    """(B, N, D) audio tokens -> (B, N, D), full attention over the real tokens."""
    return build_transformer_encoder(cfg, ctx)


def audio_transformer_cost(cfg: AudioTransformerConfig, ctx: CostContext) -> Cost:
    return transformer_encoder_cost(cfg, ctx)

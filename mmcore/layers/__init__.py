"""Shared building blocks: attention, MLP, norms, positional embeddings, transformer."""

from mmcore.layers.attention import MultiHeadAttention
from mmcore.layers.mlp import MLP, activation
from mmcore.layers.norms import make_norm
from mmcore.layers.pooling import pool
from mmcore.layers.positional import (
    LearnedPositions,
    sinusoidal_positions,
    sinusoidal_positions_2d,
)
from mmcore.layers.transformer import TransformerBlock, TransformerStack

__all__ = [
    "MLP",
    "LearnedPositions",
    "MultiHeadAttention",
    "TransformerBlock",
    "TransformerStack",
    "activation",
    "make_norm",
    "pool",
    "sinusoidal_positions",
    "sinusoidal_positions_2d",
]

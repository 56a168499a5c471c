"""The Perceiver latent-array backbone: M learned latents cross-attend to the inputs,
latent self-attention blocks refine them, and output queries decode. Cost grows with M."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmcore.contract import Tokens
from mmcore.kernels import KernelSet
from mmcore.layers import MLP, MultiHeadAttention, TransformerStack, make_norm


class CrossAttentionBlock(nn.Module):
    """queries + attn(norm(queries), norm(inputs)); + mlp. (B, Q, D) x (B, N, Din) -> (B, Q, D)."""

    def __init__(self, *, width: int, input_width: int, heads: int, kernels: KernelSet,
                 mlp_ratio: float = 4.0, act: str = "gelu", residual: bool = True) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(width)
        self.input_norm = nn.LayerNorm(input_width)
        self.attn = MultiHeadAttention(width=width, heads=heads, kernels=kernels,
                                       kv_width=input_width)
        self.mlp_norm = make_norm("layernorm", width)
        self.mlp = MLP(width=width, hidden=int(width * mlp_ratio), act=act)
        self.residual = residual

    def forward(self, queries: Tensor, inputs: Tokens) -> Tensor:
        attended = self.attn(self.query_norm(queries), self.input_norm(inputs.x),
                             key_padding_mask=inputs.mask)
        x = queries + attended if self.residual else attended
        return x + self.mlp(self.mlp_norm(x))


class LatentBackbone(nn.Module):
    """Perceiver / Perceiver IO trunk.

    ``encode``: inputs ``(B, N, input_width)`` -> latents ``(B, M, width)``.
    ``decode``: queries ``(B, Q, width)`` attend to the latents -> ``(B, Q, width)``.
    """

    def __init__(self, *, input_width: int, width: int, num_latents: int, layers: int,
                 heads: int, cross_heads: int, kernels: KernelSet, mlp_ratio: float = 4.0,
                 act: str = "gelu") -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, width) * 0.02)  # (M, D)
        self.encoder_cross = CrossAttentionBlock(width=width, input_width=input_width,
                                                 heads=cross_heads, kernels=kernels,
                                                 mlp_ratio=mlp_ratio, act=act)
        self.latent_blocks = TransformerStack(width=width, layers=layers, heads=heads,
                                              kernels=kernels, mlp_ratio=mlp_ratio, act=act,
                                              final_norm=True)
        self.decoder_cross = CrossAttentionBlock(width=width, input_width=width,
                                                 heads=cross_heads, kernels=kernels,
                                                 mlp_ratio=mlp_ratio, act=act)
        self.width = width

    def encode(self, inputs: Tokens) -> Tensor:
        b = inputs.x.shape[0]
        latents = self.latents.unsqueeze(0).expand(b, -1, -1)  # (B, M, D)
        latents = self.encoder_cross(latents, inputs)
        return self.latent_blocks(latents)  # (B, M, D)

    def decode(self, latents: Tensor, queries: Tensor) -> Tensor:
        return self.decoder_cross(queries, Tokens(latents))  # (B, Q, D)

    def forward(self, inputs: Tokens, queries: Tensor) -> Tensor:
        return self.decode(self.encode(inputs), queries)

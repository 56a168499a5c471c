"""The Perceiver latent-array backbone: M learned latents cross-attend to the inputs,
latent self-attention blocks refine them, and output queries decode. Cost grows with M
for the latent blocks and linearly with N inputs and Q output queries for the two
cross-attentions (Perceiver IO)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmcore.contract import Tokens
from mmcore.kernels import KernelSet
from mmcore.layers import MLP, MultiHeadAttention, TransformerStack, make_norm


class CrossAttentionBlock(nn.Module):
    """queries + attn(norm(queries), norm(inputs)); + mlp. (B, Q, D) x (B, N, Din) -> (B, Q, D).

    ``qk_width`` / ``v_width``: attention channels (default ``width``); ``residual=False``
    drops the query residual (Perceiver IO decoders whose queries are positions, not
    values to refine).
    """

    def __init__(self, *, width: int, input_width: int, heads: int, kernels: KernelSet,
                 mlp_ratio: float = 4.0, act: str = "gelu", residual: bool = True,
                 qk_width: int | None = None, v_width: int | None = None) -> None:
        super().__init__()
        self.query_norm = nn.LayerNorm(width)
        self.input_norm = nn.LayerNorm(input_width)
        self.attn = MultiHeadAttention(width=width, heads=heads, kernels=kernels,
                                       kv_width=input_width, qk_width=qk_width, v_width=v_width)
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

    Options beyond the defaults cover Hugging Face's ``PerceiverModel``:
    ``cross_qk_width`` (its ``cross_attention_shape_for_attention: kv`` is ``input_width``),
    ``cross_mlp_ratio``, ``query_residual`` (``use_query_residual``), ``repeats`` (the
    latent stack applied ``num_blocks`` times with shared weights) and ``final_norm``.
    ``decoder=False`` leaves out the built-in query decoder (decoders live in heads).
    """

    def __init__(self, *, input_width: int, width: int, num_latents: int, layers: int,
                 heads: int, cross_heads: int, kernels: KernelSet, mlp_ratio: float = 4.0,
                 act: str = "gelu", cross_mlp_ratio: float | None = None,
                 cross_qk_width: int | None = None, query_residual: bool = True,
                 repeats: int = 1, final_norm: bool = True, decoder: bool = True) -> None:
        super().__init__()
        cross_ratio = mlp_ratio if cross_mlp_ratio is None else cross_mlp_ratio
        self.latents = nn.Parameter(torch.randn(num_latents, width) * 0.02)  # (M, D)
        self.encoder_cross = CrossAttentionBlock(width=width, input_width=input_width,
                                                 heads=cross_heads, kernels=kernels,
                                                 mlp_ratio=cross_ratio, act=act,
                                                 residual=query_residual,
                                                 qk_width=cross_qk_width)
        self.latent_blocks = TransformerStack(width=width, layers=layers, heads=heads,
                                              kernels=kernels, mlp_ratio=mlp_ratio, act=act,
                                              final_norm=final_norm)
        self.decoder_cross: CrossAttentionBlock | None = None
        if decoder:
            self.decoder_cross = CrossAttentionBlock(width=width, input_width=width,
                                                     heads=cross_heads, kernels=kernels,
                                                     mlp_ratio=mlp_ratio, act=act)
        self.width, self.repeats = width, repeats

    def encode(self, inputs: Tokens) -> Tensor:
        """(B, N, input_width) -> latents (B, M, width)."""
        b = inputs.x.shape[0]
        latents = self.latents.unsqueeze(0).expand(b, -1, -1)  # (B, M, D)
        latents = self.encoder_cross(latents, inputs)
        for _ in range(self.repeats):  # shared weights on every repeat
            latents = self.latent_blocks(latents)
        return latents  # (B, M, D)

    def decode(self, latents: Tensor, queries: Tensor) -> Tensor:
        """queries (B, Q, width) attend to latents (B, M, width) -> (B, Q, width)."""
        if self.decoder_cross is None:
            raise ValueError("this backbone was built without a decoder (decoder=False); "
                             "decode with a query decoder head")
        return self.decoder_cross(queries, Tokens(latents))  # (B, Q, D)

    def forward(self, inputs: Tokens, queries: Tensor) -> Tensor:
        return self.decode(self.encode(inputs), queries)

"""BLIP's text side: the token embedding (the text modality's tokenizer) and the BERT-style
post-norm layer whose parts the three text modes share.

A :class:`BlipTextLayer` holds the encoder's self-attention (ITC and ITM), the decoder's own
causal self-attention (LM), one cross-attention to the image (ITM and LM) and one
feed-forward block (all modes). BLIP's sharing is this layout: the image-grounded encoder
is the unimodal encoder plus the cross-attention, and the decoder is the grounded encoder
with its self-attention swapped for its own. Norms follow BERT: ``norm(x + sublayer(x))``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.contract import ModalityInput, Tokenizer, Tokens
from mmcore.kernels import KernelSet
from mmcore.layers.attention import MultiHeadAttention
from mmcore.layers.mlp import activation
from mmcore.registry import ComponentConfig

#: which self-attention a layer runs: the encoder's (bidirectional) or the decoder's (causal)
Mode = Literal["encoder", "decoder"]


class BlipTextEmbeddingConfig(ComponentConfig):
    vocab_size: int = Field(gt=1)
    width: int = Field(gt=0)
    #: longest text (learned positions; BERT's max_position_embeddings)
    max_length: int = Field(512, ge=2)
    norm_eps: float = Field(1e-12, gt=0)


@dataclass
class BlipTextTokens(Tokens):
    """Embedded text that also keeps its ``ids (B, L)`` and the embedding that made them, so
    the BLIP fusion can re-embed the text with another first token ([ENC], [DEC])."""

    ids: Tensor | None = None
    embedding: BlipTextEmbedding | None = field(default=None, repr=False, compare=False)


class BlipTextEmbedding(Tokenizer):
    """ids (B, L) -> LayerNorm(word(ids) + position) (B, L, D), as BERT embeds."""

    def __init__(self, cfg: BlipTextEmbeddingConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.out_width = cfg.width
        self.word = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positions = nn.Embedding(cfg.max_length, cfg.width)
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        nn.init.normal_(self.word.weight, std=0.02)
        nn.init.normal_(self.positions.weight, std=0.02)

    def embed(self, ids: Tensor, offset: int = 0) -> Tensor:
        """ids (B, n) at positions offset .. offset + n - 1 -> (B, n, D)."""
        n = ids.shape[1]
        if offset + n > self.cfg.max_length:
            raise ValueError(f"{offset + n} text tokens exceed max_length {self.cfg.max_length}")
        checkable = ids.numel() and not ids.is_meta
        if checkable and (int(ids.min()) < 0 or int(ids.max()) >= self.cfg.vocab_size):
            raise ValueError(f"text ids must lie in [0, {self.cfg.vocab_size}); got "
                             f"{int(ids.min())}..{int(ids.max())}")
        return self.norm(self.word(ids) + self.positions.weight[offset : offset + n])

    def forward(self, inputs: ModalityInput) -> BlipTextTokens:
        ids = inputs["ids"] if isinstance(inputs, Mapping) else inputs
        mask = inputs.get("mask") if isinstance(inputs, Mapping) else None
        ids = ids.to(self.word.weight.device)
        mask = None if mask is None else mask.to(ids.device).bool()
        return BlipTextTokens(self.embed(ids), mask, ids=ids, embedding=self)


def build_blip_text_embedding(cfg: BlipTextEmbeddingConfig,
                              ctx: BuildContext) -> BlipTextEmbedding:
    return BlipTextEmbedding(cfg)


def example_text_ids(module: BlipTextEmbedding, batch_size: int,
                     generator: torch.Generator) -> dict[str, Tensor]:
    """Random ids with padding (row 0 full), for the conformance suite."""
    length = min(6, module.cfg.max_length)
    ids = torch.randint(0, module.cfg.vocab_size, (batch_size, length), generator=generator)
    lengths = torch.randint(1, length + 1, (batch_size,), generator=generator)
    lengths[0] = length
    return {"ids": ids, "mask": torch.arange(length)[None, :] < lengths[:, None]}


class PostNormAttention(nn.Module):
    """BERT's attention sublayer: ``norm(x + attention(x [, context]))``. (B, N, D)"""

    def __init__(self, *, width: int, heads: int, kernels: KernelSet, eps: float,
                 kv_width: int | None = None) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(width=width, heads=heads, kernels=kernels,
                                       kv_width=kv_width)
        self.norm = nn.LayerNorm(width, eps=eps)

    def forward(self, x: Tensor, context: Tensor | None = None,
                key_padding_mask: Tensor | None = None, causal: bool = False) -> Tensor:
        return self.norm(x + self.attn(x, context, key_padding_mask=key_padding_mask,
                                       causal=causal))


class FeedForward(nn.Module):
    """BERT's feed-forward sublayer: ``norm(x + out(act(inner(x))))``. (B, N, D)"""

    def __init__(self, *, width: int, hidden: int, act: str, eps: float) -> None:
        super().__init__()
        self.inner = nn.Linear(width, hidden)
        self.act = activation(act)
        self.out = nn.Linear(hidden, width)
        self.norm = nn.LayerNorm(width, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.out(self.act(self.inner(x))))


@dataclass
class LayerShape:
    """What every layer of the BLIP text transformer is made of."""

    width: int
    heads: int
    hidden: int
    context_width: int
    act: str
    eps: float
    encoder: bool  # has the encoder's self-attention (ITC, ITM)
    decoder: bool  # has the decoder's own self-attention (LM)


class BlipTextLayer(nn.Module):
    """One layer, run as the unimodal encoder (no context), the image-grounded encoder
    (context) or the decoder (``mode="decoder"``, causal, context). (B, N, D) -> same."""

    def __init__(self, shape: LayerShape, kernels: KernelSet) -> None:
        super().__init__()
        def attention(kv_width: int | None = None) -> PostNormAttention:
            return PostNormAttention(width=shape.width, heads=shape.heads, kernels=kernels,
                                     eps=shape.eps, kv_width=kv_width)

        self.attention = attention() if shape.encoder else None
        self.decoder_attention = attention() if shape.decoder else None
        self.cross_attention = attention(shape.context_width)
        self.feed_forward = FeedForward(width=shape.width, hidden=shape.hidden, act=shape.act,
                                        eps=shape.eps)

    def self_attention(self, mode: Mode) -> PostNormAttention:
        module = self.attention if mode == "encoder" else self.decoder_attention
        if module is None:
            raise ValueError(f"this BLIP text model was built without the {mode}'s "
                             "self-attention (see the fusion's modes)")
        return module

    def forward(self, x: Tensor, mask: Tensor | None, mode: Mode,
                context: Tensor | None = None, context_mask: Tensor | None = None) -> Tensor:
        x = self.self_attention(mode)(x, key_padding_mask=mask, causal=mode == "decoder")
        if context is not None:
            x = self.cross_attention(x, context, key_padding_mask=context_mask)
        return self.feed_forward(x)

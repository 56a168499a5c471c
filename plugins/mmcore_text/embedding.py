"""Token embedding: ids (B, L) -> (B, L, D) with positions; the mask passes through."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.contract import ModalityInput, Tokenizer, Tokens
from mmcore.cost import Cost, CostContext, Shape, embedding
from mmcore.layers import LearnedPositions, sinusoidal_positions
from mmcore.registry import ComponentConfig


class TokenEmbeddingConfig(ComponentConfig):
    vocab_size: int = Field(gt=0)
    width: int = Field(gt=0)
    context_length: int = Field(gt=0)
    positions: Literal["learned", "sinusoidal", "none"] = "learned"


class TokenEmbedding(Tokenizer):
    """Takes ``{"ids": (B, L), "mask": (B, L)}`` or bare ids (B, L)."""

    def __init__(self, cfg: TokenEmbeddingConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.out_width = cfg.width
        # what it accepts (validation compares them with the preprocessor's)
        self.vocab_size, self.context_length = cfg.vocab_size, cfg.context_length
        self.embed = nn.Embedding(cfg.vocab_size, cfg.width)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.positions: LearnedPositions | None = None
        if cfg.positions == "learned":
            self.positions = LearnedPositions(length=cfg.context_length, width=cfg.width)
        elif cfg.positions == "sinusoidal":
            self.register_buffer("fixed_positions",
                                 sinusoidal_positions(cfg.context_length, cfg.width),
                                 persistent=False)

    def forward(self, inputs: ModalityInput) -> Tokens:
        ids, mask = (inputs["ids"], inputs.get("mask")) if isinstance(inputs, Mapping) \
            else (inputs, None)
        if ids.dim() != 2:
            raise ValueError(f"expected token ids (B, L), got shape {tuple(ids.shape)}")
        if ids.shape[1] > self.cfg.context_length:
            raise ValueError(f"{ids.shape[1]} tokens exceed context_length "
                             f"{self.cfg.context_length}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.cfg.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.cfg.vocab_size}); got "
                             f"[{int(ids.min())}, {int(ids.max())}]")
        x = self.embed(ids)  # (B, L, D)
        if self.positions is not None:
            x = self.positions(x)
        elif self.cfg.positions == "sinusoidal":
            x = x + self.fixed_positions[: x.shape[1]].to(x.dtype)
        return Tokens(x, None if mask is None else mask.bool())


def build_token_embedding(cfg: TokenEmbeddingConfig, ctx: BuildContext) -> TokenEmbedding:
    return TokenEmbedding(cfg)


def example_ids(module: TokenEmbedding, batch_size: int,
                generator: torch.Generator) -> dict[str, Tensor]:
    """Random ids with random lengths (at least 2), for the conformance suite."""
    length = module.cfg.context_length
    ids = torch.randint(0, module.cfg.vocab_size, (batch_size, length), generator=generator)
    lengths = torch.randint(2, length + 1, (batch_size,), generator=generator)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    return {"ids": ids, "mask": mask}


def token_embedding_cost(cfg: TokenEmbeddingConfig, ctx: CostContext) -> Cost:
    """Lookup tables only (no multiply-adds); the sequence is taken at full context length."""
    cost = embedding(cfg.vocab_size, cfg.width)
    if cfg.positions == "learned":
        cost = cost + embedding(cfg.context_length, cfg.width)
    return Cost(cost.params, out=Shape(cfg.context_length, cfg.width))

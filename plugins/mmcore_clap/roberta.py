"""RoBERTa's embeddings: word + token type + learned position, then LayerNorm.

Positions follow fairseq/RoBERTa: a real (non-padding) token at sequence index ``i`` gets
position ``padding_idx + 1 + i``, a padding token gets ``padding_idx``; so a sequence may
hold ``max_positions - padding_idx - 1`` tokens. Every token has token type 0.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.contract import ModalityInput, Tokenizer, Tokens
from mmcore.cost import Cost, CostContext, Shape, embedding, norm
from mmcore.registry import ComponentConfig


class RobertaEmbeddingConfig(ComponentConfig):
    vocab_size: int = Field(gt=0)
    width: int = Field(gt=0)
    #: rows of the position table (RoBERTa: 514 = 512 tokens + padding_idx + 1)
    max_positions: int = Field(514, gt=0)
    padding_idx: int = Field(1, ge=0)
    type_vocab_size: int = Field(1, gt=0)
    norm_eps: float = Field(1e-12, gt=0)

    @model_validator(mode="after")
    def _check(self) -> RobertaEmbeddingConfig:
        if self.padding_idx >= min(self.vocab_size, self.max_positions - 1):
            raise ValueError(f"padding_idx {self.padding_idx} must be a token id and leave "
                             f"room in the {self.max_positions} positions")
        return self

    @property
    def context_length(self) -> int:
        """The most tokens one sequence may hold."""
        return self.max_positions - self.padding_idx - 1


class RobertaEmbedding(Tokenizer):
    """``{"ids": (B, L), "mask": (B, L)}`` or ids (B, L) -> Tokens (B, L, width).

    Without a mask, tokens other than ``padding_idx`` are the real ones."""

    def __init__(self, cfg: RobertaEmbeddingConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.out_width = cfg.width
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.width,
                                            padding_idx=cfg.padding_idx)
        self.position_embeddings = nn.Embedding(cfg.max_positions, cfg.width,
                                                padding_idx=cfg.padding_idx)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.width)
        for table in (self.word_embeddings, self.position_embeddings,
                      self.token_type_embeddings):
            nn.init.normal_(table.weight, std=0.02)
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)

    def positions(self, ids: Tensor) -> Tensor:
        """(B, L) ids -> (B, L) position ids, counting real tokens from padding_idx + 1."""
        real = ids.ne(self.cfg.padding_idx).long()
        return torch.cumsum(real, dim=1) * real + self.cfg.padding_idx

    def forward(self, inputs: ModalityInput) -> Tokens:
        ids, mask = (inputs["ids"], inputs.get("mask")) if isinstance(inputs, Mapping) \
            else (inputs, None)
        self._check(ids)
        x = self.word_embeddings(ids) + self.token_type_embeddings.weight[0]
        x = self.norm(x + self.position_embeddings(self.positions(ids)))  # (B, L, D)
        mask = ids.ne(self.cfg.padding_idx) if mask is None else mask.bool()
        return Tokens(x, mask)

    def _check(self, ids: Tensor) -> None:
        if ids.dim() != 2:
            raise ValueError(f"expected token ids (B, L), got shape {tuple(ids.shape)}")
        if ids.shape[1] > self.cfg.context_length:
            raise ValueError(f"{ids.shape[1]} tokens exceed the {self.cfg.context_length} "
                             f"positions (max_positions {self.cfg.max_positions} - "
                             f"padding_idx {self.cfg.padding_idx} - 1)")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.cfg.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.cfg.vocab_size}); got "
                             f"[{int(ids.min())}, {int(ids.max())}]")


def build_roberta_embedding(cfg: RobertaEmbeddingConfig,
                            ctx: BuildContext) -> RobertaEmbedding:
    return RobertaEmbedding(cfg)


def roberta_embedding_cost(cfg: RobertaEmbeddingConfig, ctx: CostContext) -> Cost:
    """Three lookup tables and a LayerNorm; the sequence is taken at full length."""
    n, w = cfg.context_length, cfg.width
    tables = embedding(cfg.vocab_size + cfg.max_positions + cfg.type_vocab_size, w)
    cost = tables + norm(n, w)
    return Cost(cost.params, activations=cost.activations, out=Shape(n, w))


def example_roberta_ids(module: RobertaEmbedding, batch_size: int,
                        generator: torch.Generator) -> dict[str, Tensor]:
    """Random non-padding ids of random lengths, padded with padding_idx after them."""
    cfg = module.cfg
    length = min(cfg.context_length, 12)
    ids = torch.randint(0, cfg.vocab_size - 1, (batch_size, length), generator=generator)
    ids = ids + (ids >= cfg.padding_idx).long()  # skip padding_idx
    lengths = torch.randint(2, length + 1, (batch_size,), generator=generator)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    return {"ids": ids.masked_fill(~mask, cfg.padding_idx), "mask": mask}

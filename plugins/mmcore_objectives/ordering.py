"""Temporal ordering (shuffle-and-learn, OPN, HERO's frame order modelling) on any sequence.

Design: the objective works on the *encoder output* tokens of ``modality``, not through the
``prepare`` hook. Each row's real tokens (after ``keep_prefix``, e.g. a CLS token) are cut
into ``segments`` contiguous, near-equal parts along the sequence and mean-pooled, giving
K segment features. The objective owns the permutation classifier: a LayerNorm on each
segment feature, then an MLP over the K features concatenated in shuffled order, with one
class per permutation (K!, so K <= 5). Every permutation of every row is scored (the
classifier is tiny; the encoder ran once), so the loss is deterministic and the other
objectives keep seeing the unshuffled input.

Limits: segment features come from an encoder that saw the whole, ordered sequence, and
the tokenizer's absolute positions travel with each token. When positions are visible
(learned or sinusoidal positions in the tokenizer), the order can be read from them
instead of from content; the objective then teaches little about temporal dynamics. It is
meaningful for position-free token streams (``positions: none``, or an encoder without
absolute positions), where only content can tell which segment comes first. Rows with
fewer than K real tokens do not count.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.contract import Batch, ModelOutput, Objective, Tokens
from mmcore.cost import Cost, CostContext, linear, norm
from mmcore.registry import ComponentConfig
from mmcore_objectives.common import accuracy, check_width, cost_width, token_width, tokens_of


class TemporalOrderingConfig(ComponentConfig):
    #: the output tokens to cut along the sequence (a sequence modality: video, audio)
    modality: str
    segments: int = Field(3, ge=2, le=5)
    #: width of the tokens; None: the builder's encoder width of ``modality``
    width: int | None = Field(None, gt=0)
    hidden: int = Field(128, gt=0)
    #: leading tokens left out of every segment (1 for a CLS token)
    keep_prefix: int = Field(0, ge=0)


def permutations(k: int) -> Tensor:
    """Every permutation of range(k) in lexicographic order. (k!, k) long."""
    return torch.tensor(list(itertools.permutations(range(k))), dtype=torch.long)


def segment_features(tokens: Tokens, segments: int, keep_prefix: int = 0
                     ) -> tuple[Tensor, Tensor]:
    """Mean of each of ``segments`` contiguous parts of each row's real tokens.
    (B, N, D) -> features (B, K, D) and ``usable (B,)``: the row has >= K real tokens."""
    valid = tokens.valid().clone()
    valid[:, :keep_prefix] = False
    length = valid.sum(1, keepdim=True)  # (B, 1)
    rank = valid.long().cumsum(1) - 1  # position among the row's real tokens
    part = (rank * segments).div(length.clamp(min=1), rounding_mode="floor").clamp(0, segments - 1)
    weight = F.one_hot(part, segments).to(tokens.x.dtype) * valid[..., None]  # (B, N, K)
    sums = torch.einsum("bnk,bnd->bkd", weight, tokens.x)
    return sums / weight.sum(1)[..., None].clamp(min=1.0), length.squeeze(1) >= segments


class TemporalOrdering(Objective):
    """Classify which permutation shuffled a row's segment features."""

    def __init__(self, cfg: TemporalOrderingConfig, *, width: int) -> None:
        super().__init__()
        self.cfg, self.width = cfg, width
        k = cfg.segments
        self.register_buffer("orders", permutations(k), persistent=False)  # (P, K)
        self.norm = nn.LayerNorm(width)
        self.classifier = nn.Sequential(nn.Linear(k * width, cfg.hidden), nn.GELU(),
                                        nn.Linear(cfg.hidden, math.factorial(k)))

    def permutation_logits(self, features: Tensor) -> Tensor:
        """(B, K, D) segment features -> logits (B, P, P): row p scores the features
        shuffled by permutation p against every permutation."""
        b, k, d = features.shape
        shuffled = self.norm(features)[:, self.orders]  # (B, P, K, D)
        return self.classifier(shuffled.reshape(b, -1, k * d))

    def forward(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        tokens = tokens_of(output, self.cfg.modality, "temporal-ordering")
        check_width(tokens, self.width, self.cfg.modality, "temporal-ordering")
        features, usable = segment_features(tokens, self.cfg.segments, self.cfg.keep_prefix)
        logits = self.permutation_logits(features)[usable]  # (B', P, P)
        p = logits.shape[1]
        target = torch.arange(p, device=logits.device).expand(logits.shape[0], p)
        if logits.shape[0] == 0:  # no row long enough to cut
            return {"loss": logits.sum() * 0.0, "accuracy": logits.new_zeros(())}
        flat, flat_target = logits.reshape(-1, p), target.reshape(-1)
        return {"loss": F.cross_entropy(flat.float(), flat_target),
                "accuracy": accuracy(flat, flat_target)}


def build_temporal_ordering(cfg: TemporalOrderingConfig,
                            ctx: BuildContext) -> TemporalOrdering:
    return TemporalOrdering(cfg, width=token_width(cfg.width, cfg.modality, ctx.widths, "width"))


def temporal_ordering_cost(cfg: TemporalOrderingConfig, ctx: CostContext) -> Cost:
    """Exact params; FLOPs of scoring all K! orders of one sample."""
    width = cost_width(cfg.width, cfg.modality, ctx, "width")
    k, p = cfg.segments, math.factorial(cfg.segments)
    return (norm(k, width) + linear(p, k * width, cfg.hidden)
            + linear(p, cfg.hidden, p))

"""Image-text matching (BLIP's ITM) for any two token streams, with hard negatives.

The objective owns a small cross-attention fusion: the ``query`` tokens (e.g. text) attend
to themselves and to the ``context`` tokens (e.g. image) through a
:class:`mmcore.layers.TransformerStack` with ``cross_width``; the pooled query output feeds a
binary matched / not-matched classifier. Objectives only see the ModelOutput, so this fusion
lives here rather than in the model: it re-reads the already-encoded tokens of both streams,
pairing each query with its own context (positive) and with a hard negative each way:

- for query row i, a context j != i drawn with probability softmax_j(s_ij / temperature);
- for context column j, a query i != j drawn with probability softmax_i(s_ij / temperature);

where s = cosine similarity of the pooled ``embeddings`` (detached; BLIP uses its ITC
similarities). Loss: cross-entropy over the 3B pairs. In eval mode the hardest negative
(the arg max) is taken instead, so evaluation is deterministic. A batch of one has no
negatives and trains on its positive only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.contract import Batch, ModelOutput, Objective, Tokens
from mmcore.cost import Cost, CostContext, Shape, linear, transformer_stack
from mmcore.kernels import KernelSet
from mmcore.layers import TransformerStack, pool
from mmcore.layers.pooling import PoolKind
from mmcore.registry import ComponentConfig
from mmcore_objectives.common import (
    accuracy,
    check_width,
    cost_tokens,
    cost_width,
    token_width,
    tokens_of,
)


class MatchingConfig(ComponentConfig):
    #: tokens that attend (BLIP: text), and the tokens they cross-attend to (BLIP: image)
    query: str
    context: str
    layers: int = Field(1, gt=0)
    heads: int = Field(4, gt=0)
    mlp_ratio: float = Field(4.0, gt=0)
    #: token widths; None: the builder's per-modality encoder width
    query_width: int | None = Field(None, gt=0)
    context_width: int | None = Field(None, gt=0)
    #: how the fused query tokens are pooled before the classifier
    pooling: PoolKind = "cls"
    #: the pooled embeddings whose similarity picks negatives; None: (query, context)
    similarity: tuple[str, str] | None = None
    #: softmax temperature over similarities when sampling hard negatives
    temperature: float = Field(0.07, gt=0)
    #: seed of the objective's own sampling generator; None: the global torch RNG
    seed: int | None = None


def sample_hard_negatives(similarity: Tensor, *, temperature: float, hardest: bool = False,
                          generator: torch.Generator | None = None,
                          exclude: Tensor | None = None) -> Tensor:
    """For each row i of ``similarity (B, B)``, a column j != i drawn with probability
    softmax_j(s_ij / temperature) (or the arg max when ``hardest``). -> (B,) long. B >= 2.

    ``exclude (B, B)`` bool: pairs that are not negatives either (e.g. equal labels: the
    same class, or the same image); a row that would have none left excludes only j = i."""
    b = similarity.shape[0]
    if b < 2 or similarity.shape != (b, b):
        raise ValueError(f"need a square similarity of at least 2 x 2, got "
                         f"{tuple(similarity.shape)}")
    eye = torch.eye(b, dtype=torch.bool, device=similarity.device)
    if exclude is not None:
        eye = eye | exclude.to(eye.device)
        eye = torch.where(eye.all(dim=1, keepdim=True),
                          torch.eye(b, dtype=torch.bool, device=eye.device), eye)
    logits = (similarity.detach().float() / temperature).masked_fill(eye, float("-inf"))
    if hardest:
        return logits.argmax(dim=1)
    probs = torch.softmax(logits, dim=1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def mine_hard_negatives(similarity: Tensor, *, temperature: float, hardest: bool = False,
                        generator: torch.Generator | None = None,
                        labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Hard negatives both ways from a ``similarity (B, B)`` of queries (rows) and contexts
    (columns), e.g. BLIP's ITC similarities: (a negative context per query, a negative query
    per context), each (B,) long. ``labels (B,)``: rows with equal labels are never each
    other's negatives. See :func:`sample_hard_negatives`."""
    exclude = None if labels is None else labels[:, None] == labels[None, :]
    return tuple(sample_hard_negatives(s, temperature=temperature, hardest=hardest,
                                       generator=generator, exclude=exclude)
                 for s in (similarity, similarity.t()))  # type: ignore[return-value]


def _select(tokens: Tokens, index: Tensor) -> Tokens:
    return Tokens(tokens.x[index], None if tokens.mask is None else tokens.mask[index])


def _concat(parts: list[Tokens]) -> Tokens:
    """Stack Tokens of one stream along the batch. (B_i, N, D) -> (sum B_i, N, D)."""
    return Tokens(torch.cat([t.x for t in parts]), torch.cat([t.valid() for t in parts]))


class Matching(Objective):
    """Binary matched / not-matched classification of (query, context) token pairs."""

    def __init__(self, cfg: MatchingConfig, *, query_width: int, context_width: int,
                 kernels: KernelSet) -> None:
        super().__init__()
        self.cfg = cfg
        self.query_width, self.context_width = query_width, context_width
        self.fusion = TransformerStack(width=query_width, layers=cfg.layers, heads=cfg.heads,
                                       kernels=kernels, mlp_ratio=cfg.mlp_ratio,
                                       cross_width=context_width)
        self.classifier = nn.Linear(query_width, 2)  # logits of (not matched, matched)
        self._generators: dict[torch.device, torch.Generator] = {}

    def match_logits(self, query: Tokens, context: Tokens) -> Tensor:
        """(B, Nq, Dq) and (B, Nc, Dc) -> logits (B, 2) of (not matched, matched)."""
        x = self.fusion(query.x, query.mask, context=context.x, context_mask=context.mask)
        return self.classifier(pool(Tokens(x, query.mask), self.cfg.pooling))

    def _generator(self, device: torch.device) -> torch.Generator | None:
        if self.cfg.seed is None:
            return None
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.cfg.seed)
        return self._generators[device]

    def negatives(self, similarity: Tensor) -> tuple[Tensor, Tensor]:
        """(negative context per query row, negative query per context column), each (B,)."""
        return mine_hard_negatives(similarity, temperature=self.cfg.temperature,
                                   hardest=not self.training,
                                   generator=self._generator(similarity.device))

    def _similarity(self, output: ModelOutput) -> Tensor:
        a, b = self.cfg.similarity or (self.cfg.query, self.cfg.context)
        missing = [n for n in (a, b) if n not in output.embeddings]
        if missing:
            raise ValueError(f"matching: no embeddings {missing} to pick negatives with; the "
                             f"output has {sorted(output.embeddings)}")
        ea = F.normalize(output.embeddings[a].detach().float(), dim=-1)
        eb = F.normalize(output.embeddings[b].detach().float(), dim=-1)
        return ea @ eb.t()  # (B, B)

    def forward(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        query = tokens_of(output, self.cfg.query, "matching")
        context = tokens_of(output, self.cfg.context, "matching")
        check_width(query, self.query_width, self.cfg.query, "matching")
        check_width(context, self.context_width, self.cfg.context, "matching")
        queries, contexts = [query], [context]
        b = query.x.shape[0]
        if b > 1:
            neg_context, neg_query = self.negatives(self._similarity(output))
            queries += [query, _select(query, neg_query)]
            contexts += [_select(context, neg_context), context]
        logits = self.match_logits(_concat(queries), _concat(contexts))  # (B or 3B, 2)
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        labels[:b] = 1
        loss = F.cross_entropy(logits.float(), labels)
        return {"loss": loss, "accuracy": accuracy(logits, labels),
                "positive_accuracy": accuracy(logits[:b], labels[:b])}


def build_matching(cfg: MatchingConfig, ctx: BuildContext) -> Matching:
    qw = token_width(cfg.query_width, cfg.query, ctx.widths, "query_width")
    cw = token_width(cfg.context_width, cfg.context, ctx.widths, "context_width")
    if qw % cfg.heads:
        raise ValueError(f"query width {qw} is not divisible by heads {cfg.heads}")
    if cfg.similarity is not None:
        missing = [n for n in cfg.similarity if n not in ctx.embedding_widths]
        if missing:
            raise ValueError(f"similarity names {missing}, not embeddings the fusion gives: "
                             f"{sorted(ctx.embedding_widths)}")
    return Matching(cfg, query_width=qw, context_width=cw, kernels=ctx.kernels)


def matching_cost(cfg: MatchingConfig, ctx: CostContext) -> Cost:
    """Exact params. FLOPs per sample: three fusion passes (the positive and two negatives)
    over the query tokens, with token counts from ``ctx.shapes`` (1 each when unknown)."""
    qw = cost_width(cfg.query_width, cfg.query, ctx, "query_width")
    cw = cost_width(cfg.context_width, cfg.context, ctx, "context_width")
    nq, nc = cost_tokens(cfg.query, ctx), cost_tokens(cfg.context, ctx)
    one = transformer_stack(nq, qw, cfg.layers, cfg.heads, cfg.mlp_ratio,
                            cross=Shape(nc, cw)) + linear(1, qw, 2)
    return Cost(params=one.params, flops=3 * one.flops, activations=3 * one.activations,
                attention_scores=one.attention_scores)

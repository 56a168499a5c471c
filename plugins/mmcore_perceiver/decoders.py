"""Perceiver IO decoders as heads: output queries cross-attend to the latents.

A decoder reads ``FusionOutput.latents`` (B, M, D_lat) from a latent-array fusion
(``perceiver``), builds its queries (B, Q, D_q) with a registered query builder, runs one
:class:`mmcore.backbone.CrossAttentionBlock` and projects each query's output:

- ``query-classifier``: per-query logits (B, Q, num_classes) (per-token, per-pixel labels);
- ``query-regressor``: per-query values (B, Q, outputs);
- ``pooled-query-classifier``: logits (B, num_classes) from the mean of its queries' outputs
  (one learned query by default: Hugging Face's ``PerceiverClassificationDecoder``).

The cost is linear in Q (each query attends to the M latents, never to the N inputs).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from mmcore.backbone import CrossAttentionBlock
from mmcore.builder import BuildContext
from mmcore.contract import FusionOutput, Head, Tokens
from mmcore.registry import ComponentConfig
from mmcore_perceiver.queries import QueryBuilder, build_query


class DecoderConfig(ComponentConfig):
    #: the query builder, ``{type: ..., ...}`` (``mmcore list query``)
    queries: dict[str, Any]
    #: cross-attention heads
    heads: int = Field(1, gt=0)
    #: query-key and value channels of the cross-attention (default: the query width)
    qk_width: int | None = Field(None, gt=0)
    v_width: int | None = Field(None, gt=0)
    mlp_ratio: float = Field(1.0, gt=0)
    #: add the queries back after attention (positions usually should not be)
    residual: bool = False
    #: the output grid the queries must cover, e.g. [32, 32] for a 32 x 32 mask; checked
    #: against the query builder's count when the model is built (mmcore validate)
    shape: list[int] | None = None
    #: width of the latents (default: the fusion's ``latents`` embedding width)
    latent_width: int | None = Field(None, gt=0)

    @field_validator("shape")
    @classmethod
    def _shape(cls, shape: list[int] | None) -> list[int] | None:
        if shape is not None and (not shape or any(n <= 0 for n in shape)):
            raise ValueError(f"shape must list positive sizes, got {shape}")
        return shape


class QueryClassifierConfig(DecoderConfig):
    num_classes: int = Field(gt=0)


class QueryRegressorConfig(DecoderConfig):
    outputs: int = Field(gt=0)


class PooledClassifierConfig(DecoderConfig):
    num_classes: int = Field(gt=0)
    #: default: one learned query of the latent width, with the query residual
    queries: dict[str, Any] = Field(default_factory=dict)
    residual: bool = True


class QueryDecoder(Head):
    """latents (B, M, D_lat) -> per-query outputs (B, Q, out_features), or (B, out_features)
    when ``pooled``."""

    def __init__(self, *, queries: QueryBuilder, latent_width: int, cfg: DecoderConfig,
                 out_features: int, pooled: bool, kernels: Any) -> None:
        super().__init__()
        self.queries = queries
        width = queries.out_width
        self.block = CrossAttentionBlock(width=width, input_width=latent_width, heads=cfg.heads,
                                         kernels=kernels, mlp_ratio=cfg.mlp_ratio,
                                         residual=cfg.residual, qk_width=cfg.qk_width,
                                         v_width=cfg.v_width)
        self.proj = nn.Linear(width, out_features)
        self.out_features, self.pooled = out_features, pooled
        self.latent_width, self.num_queries = latent_width, queries.num_queries
        self.shape = tuple(cfg.shape) if cfg.shape else queries.shape

    def forward(self, fused: FusionOutput) -> Tensor:
        latents = fused.latents
        if latents is None:
            raise ValueError("a Perceiver IO decoder head needs the latents of a latent-array "
                             "fusion (fusion type perceiver); this fusion gives none")
        queries = self.queries(latents.x.shape[0]).to(latents.x.dtype)  # (B, Q, D_q)
        out = self.proj(self.block(queries, latents))  # (B, Q, C)
        return out.mean(1) if self.pooled else out


def _latent_width(cfg: DecoderConfig, ctx: BuildContext) -> int:
    if cfg.latent_width is not None:
        return cfg.latent_width
    if "latents" not in ctx.embedding_widths:
        raise ValueError("needs a latent-array fusion (type perceiver), whose 'latents' "
                         f"it decodes; this fusion gives {sorted(ctx.embedding_widths)}")
    return ctx.embedding_widths["latents"]


def _queries(cfg: DecoderConfig, ctx: BuildContext, default_width: int) -> QueryBuilder:
    ref = cfg.queries or {"type": "learned", "num_queries": 1, "width": default_width}
    try:
        queries = build_query(ref, ctx)
    except ValueError as exc:
        raise ValueError(f"queries: {exc}") from None
    if cfg.shape is not None and math.prod(cfg.shape) != queries.num_queries:
        raise ValueError(f"queries: {ref['type']!r} gives {queries.num_queries} queries "
                         f"(grid {list(queries.shape)}) but shape {cfg.shape} needs "
                         f"{math.prod(cfg.shape)}, one per output")
    return queries


def _build(cfg: DecoderConfig, ctx: BuildContext, out: int, pooled: bool) -> QueryDecoder:
    latent_width = _latent_width(cfg, ctx)
    queries = _queries(cfg, ctx, latent_width)
    return QueryDecoder(queries=queries, latent_width=latent_width, cfg=cfg, out_features=out,
                        pooled=pooled, kernels=ctx.kernels)


def build_query_classifier(cfg: QueryClassifierConfig, ctx: BuildContext) -> QueryDecoder:
    return _build(cfg, ctx, cfg.num_classes, pooled=False)


def build_query_regressor(cfg: QueryRegressorConfig, ctx: BuildContext) -> QueryDecoder:
    return _build(cfg, ctx, cfg.outputs, pooled=False)


def build_pooled_classifier(cfg: PooledClassifierConfig, ctx: BuildContext) -> QueryDecoder:
    return _build(cfg, ctx, cfg.num_classes, pooled=True)


def example_latents(module: QueryDecoder, batch_size: int,
                    generator: torch.Generator) -> FusionOutput:
    """Five random latents of the decoder's latent width, for the conformance suite."""
    x = torch.randn(batch_size, 5, module.latent_width, generator=generator)
    return FusionOutput(latents=Tokens(x))

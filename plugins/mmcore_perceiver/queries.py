"""Output-query builders: what a Perceiver IO decoder asks the latents about.

Each builder is a module with ``num_queries`` (Q), ``out_width`` (D) and ``shape`` (the
index grid the queries cover, e.g. ``(H, W)``; ``(Q,)`` for a plain set) whose
``forward(batch_size)`` returns the queries ``(B, Q, D)``. Queries depend on what must be
predicted (a position, a modality, a task), never on the input, so one decoder serves
any input size at a cost linear in Q.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.registry import ComponentConfig

#: index grids of 1-D and 2-D outputs
GridShape = list[int]


def _check_grid(shape: list[int]) -> list[int]:
    if not 1 <= len(shape) <= 2 or any(n <= 0 for n in shape):
        raise ValueError(f"shape must be [N] or [H, W] of positive sizes, got {shape}")
    return shape


class QueryBuilder(nn.Module):
    """Base of every builder: ``forward(batch_size) -> (B, Q, D)``."""

    num_queries: int
    out_width: int
    shape: tuple[int, ...]

    def table(self) -> Tensor:  # pragma: no cover - interface
        """The queries of one item. (Q, D)"""
        raise NotImplementedError

    def forward(self, batch_size: int) -> Tensor:
        table = self.table()
        return table.unsqueeze(0).expand(batch_size, -1, -1)  # (B, Q, D)


# -- learned ----------------------------------------------------------------------------


class LearnedConfig(ComponentConfig):
    num_queries: int = Field(gt=0)
    width: int = Field(gt=0)
    std: float = Field(0.02, gt=0)


class LearnedPositionsConfig(ComponentConfig):
    #: the output grid: [N] (sequence) or [H, W] (image); one query per cell, row-major
    shape: GridShape
    width: int = Field(gt=0)
    std: float = Field(0.02, gt=0)

    @field_validator("shape")
    @classmethod
    def _grid(cls, shape: list[int]) -> list[int]:
        return _check_grid(shape)


class LearnedQueries(QueryBuilder):
    """A learned table ``weight: (Q, D)`` (Hugging Face's trainable position encoding)."""

    def __init__(self, *, shape: tuple[int, ...], width: int, std: float) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.num_queries, self.out_width = math.prod(shape), width
        self.weight = nn.Parameter(torch.randn(self.num_queries, width) * std)

    def table(self) -> Tensor:
        return self.weight  # (Q, D)


def build_learned(cfg: LearnedConfig, ctx: BuildContext) -> LearnedQueries:
    return LearnedQueries(shape=(cfg.num_queries,), width=cfg.width, std=cfg.std)


def build_learned_positions(cfg: LearnedPositionsConfig, ctx: BuildContext) -> LearnedQueries:
    return LearnedQueries(shape=tuple(cfg.shape), width=cfg.width, std=cfg.std)


# -- Fourier ----------------------------------------------------------------------------


class FourierConfig(ComponentConfig):
    #: the output grid: [N] or [H, W]; positions run linearly over [-1, 1] per axis
    shape: GridShape
    num_bands: int = Field(gt=0)
    #: the resolution whose Nyquist frequency is the top band (default: ``shape``)
    max_resolution: list[int] | None = None
    #: append the raw positions to the features (Hugging Face's ``concat_pos``)
    concat_pos: bool = True
    sine_only: bool = False
    #: project the features to this width with a Linear (``project_pos_dim``)
    width: int | None = Field(None, gt=0)

    @field_validator("shape")
    @classmethod
    def _grid(cls, shape: list[int]) -> list[int]:
        return _check_grid(shape)


def linear_positions(shape: tuple[int, ...]) -> Tensor:
    """Row-major grid coordinates in [-1, 1]. (prod(shape), len(shape)) float32"""
    axes = [torch.linspace(-1.0, 1.0, n, dtype=torch.float32) for n in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    return grid.reshape(-1, len(shape))


def fourier_features(positions: Tensor, num_bands: int, max_resolution: tuple[int, ...],
                     concat_pos: bool = True, sine_only: bool = False) -> Tensor:
    """Perceiver Fourier features of ``positions: (N, d)``, laid out as Hugging Face's
    ``generate_fourier_features``: [pos,] sin(pi f x) per axis and band, [cos ...].
    -> (N, d * num_bands * (1 or 2) [+ d])"""
    bands = torch.stack([torch.linspace(1.0, res / 2, num_bands) for res in max_resolution])
    per_axis = (positions[:, :, None] * bands[None]).reshape(positions.shape[0], -1)  # (N, d*K)
    features = [torch.sin(math.pi * per_axis)]
    if not sine_only:
        features.append(torch.cos(math.pi * per_axis))
    if concat_pos:
        features.insert(0, positions)
    return torch.cat(features, dim=-1)


class FourierQueries(QueryBuilder):
    """Fixed Fourier features of each grid position, optionally projected (``projection``)."""

    def __init__(self, cfg: FourierConfig) -> None:
        super().__init__()
        self.shape = tuple(cfg.shape)
        resolution = tuple(cfg.max_resolution or cfg.shape)
        if len(resolution) != len(self.shape):
            raise ValueError(f"max_resolution {list(resolution)} must have one entry per "
                             f"axis of shape {list(self.shape)}")
        features = fourier_features(linear_positions(self.shape), cfg.num_bands, resolution,
                                    cfg.concat_pos, cfg.sine_only)  # (Q, F)
        self.register_buffer("features", features, persistent=False)
        self.projection: nn.Linear | None = None
        if cfg.width is not None:
            self.projection = nn.Linear(features.shape[1], cfg.width)
        self.num_queries = features.shape[0]
        self.out_width = cfg.width or features.shape[1]

    def table(self) -> Tensor:
        features: Tensor = self.features
        if self.projection is not None:
            return self.projection(features.to(self.projection.weight.dtype))
        return features


def build_fourier(cfg: FourierConfig, ctx: BuildContext) -> FourierQueries:
    return FourierQueries(cfg)


# -- modality / task embeddings ---------------------------------------------------------


class EmbeddingConfig(ComponentConfig):
    width: int = Field(gt=0)
    #: what the embedding stands for (a modality or task name); documentation only
    name: str = ""
    std: float = Field(0.02, gt=0)


def build_embedding(cfg: EmbeddingConfig, ctx: BuildContext) -> LearnedQueries:
    """One learned vector (Q = 1); ``concat`` repeats it beside every query of its parts."""
    return LearnedQueries(shape=(1,), width=cfg.width, std=cfg.std)


# -- concatenation ----------------------------------------------------------------------


class ConcatConfig(ComponentConfig):
    #: query builders ``{type: ..., ...}`` whose features are concatenated per query; a
    #: part with one query (an embedding) is repeated for every query of the others
    parts: list[dict[str, Any]] = Field(min_length=1)
    #: project the concatenated features to this width with a Linear
    width: int | None = Field(None, gt=0)


class ConcatQueries(QueryBuilder):
    """[part_1 | part_2 | ...] per query -> (B, Q, sum D_i), optionally projected."""

    def __init__(self, parts: list[QueryBuilder], width: int | None) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.num_queries, self.shape = _common_count(parts)
        total = sum(p.out_width for p in parts)
        self.projection = nn.Linear(total, width) if width else None
        self.out_width = width or total

    def table(self) -> Tensor:
        tables = [part.table() for part in self.parts]  # each (Q_i, D_i), Q_i in {1, Q}
        joined = torch.cat([t.expand(self.num_queries, -1) for t in tables], dim=-1)
        return joined if self.projection is None else self.projection(joined)


def _common_count(parts: list[QueryBuilder]) -> tuple[int, tuple[int, ...]]:
    """The parts' common query count and grid; parts with one query broadcast."""
    many = [(i, p) for i, p in enumerate(parts) if p.num_queries != 1]
    if not many:
        return 1, (1,)
    first, reference = many[0]
    for i, part in many[1:]:
        if part.num_queries != reference.num_queries:
            raise ValueError(f"parts.{i} gives {part.num_queries} queries but parts.{first} "
                             f"gives {reference.num_queries}; parts must agree (or give 1)")
    return reference.num_queries, reference.shape


def build_concat(cfg: ConcatConfig, ctx: BuildContext) -> ConcatQueries:
    parts = []
    for i, part in enumerate(cfg.parts):
        try:
            parts.append(build_query(part, ctx))
        except ValueError as exc:
            raise ValueError(f"parts.{i}: {exc}") from None
    return ConcatQueries(parts, cfg.width)


# -- building a nested query builder ----------------------------------------------------


def build_query(ref: dict[str, Any], ctx: BuildContext) -> QueryBuilder:
    """A query builder from its spec mapping ``{type: name, ...params}`` (registry kind
    ``query``). ValueError naming the problem (unknown type, bad params)."""
    from pydantic import ValidationError

    from mmcore.builder import make_component
    from mmcore.errors import RegistryError
    from mmcore.plugins import get_registry
    from mmcore.spec import ComponentRef

    if not isinstance(ref, dict) or not isinstance(ref.get("type"), str):
        raise ValueError(f"a query builder is a mapping with a 'type', got {ref!r}")
    try:
        built = make_component(get_registry(), "query", ComponentRef.model_validate(ref), ctx)
    except RegistryError as exc:
        raise ValueError(str(exc)) from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or ref['type']}: {e['msg']}"
                             for e in exc.errors())
        raise ValueError(f"{ref['type']}: {problems}") from None
    if not isinstance(built, QueryBuilder):
        raise ValueError(f"query {ref['type']!r} did not build a QueryBuilder")
    return built

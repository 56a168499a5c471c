"""Helpers the fusion strategies share: pooling by name, per-sample presence, layer
placement and the cost of the shared layers they are built from."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Literal

import torch
from torch import Tensor, nn

from mmcore.contract import Tokens
from mmcore.cost import Cost, Shape, linear, norm, transformer_block
from mmcore.layers import pool

PoolKind = Literal["cls", "eot", "mean"]


def check_names(what: str, names: Iterable[str], modalities: Collection[str]) -> None:
    """Raise ValueError when ``names`` (config keys of ``what``) are not ``modalities``."""
    unknown = sorted(set(names) - set(modalities))
    if unknown:
        raise ValueError(f"{what} names unknown modalities {unknown}; "
                         f"modalities are {sorted(modalities)}")


def pool_each(tokens: Mapping[str, Tokens], pooling: Mapping[str, PoolKind],
              default: PoolKind = "mean") -> dict[str, Tensor]:
    """name: (B, N, D) -> name: (B, D), each with its own pooling (else ``default``)."""
    return {name: pool(tokens[name], pooling.get(name, default)) for name in sorted(tokens)}


def presence(tokens: Tokens) -> Tensor:
    """(B,) bool: whether each sample has any real token (modality dropout masks whole
    modalities per sample)."""
    return tokens.valid().any(dim=1)


def joint_mask(*masks: Tensor) -> Tensor:
    """Concatenate (B, N_i) masks along the sequence. -> (B, sum N_i) bool."""
    return torch.cat(masks, dim=1)


def ones_mask(x: Tensor) -> Tensor:
    """An all-real (B, N) mask for ``x: (B, N, D)``."""
    return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)


def layer_of(stacks: nn.ModuleDict, name: str, index: int) -> nn.Module:
    """Layer ``index`` of the ``name`` stream in a ModuleDict of ModuleLists."""
    stack = stacks[name]
    assert isinstance(stack, nn.ModuleList)
    return stack[index]


def has_cross(index: int, every: int) -> bool:
    """Whether layer ``index`` (0-based) gets cross-attention when it comes every ``every``
    layers: layers every-1, 2*every-1, ... (OpenFlamingo's convention; every=1: all)."""
    return (index + 1) % every == 0


def check_every(every: int, layers: int) -> None:
    if every > layers:
        raise ValueError(f"every={every} exceeds layers={layers}: no layer would "
                         "cross-attend")


# -- costs --------------------------------------------------------------------------------


def stack_cost(tokens: int, width: int, layers: int, heads: int, mlp_ratio: float,
               final_norm: bool = True) -> Cost:
    """A :class:`mmcore.layers.TransformerStack` without cross-attention."""
    cost = transformer_block(tokens, width, heads, mlp_ratio).times(layers)
    return cost + norm(tokens, width) if final_norm else cost


def projection_cost(shapes: Mapping[str, Shape], width: int) -> Cost:
    """A biased Linear to ``width`` for every modality of another width."""
    cost = Cost()
    for shape in shapes.values():
        if shape.width != width:
            cost = cost + linear(shape.tokens, shape.width, width)
    return cost


def widths_of(shapes: Mapping[str, Shape]) -> dict[str, int]:
    return {name: shape.width for name, shape in sorted(shapes.items())}


def fusion_cost(cost: Cost, embeddings: Mapping[str, int]) -> Cost:
    """``cost`` as a fusion reports it: no single output Shape, its embedding widths."""
    return Cost(cost.params, cost.flops, cost.activations, cost.attention_scores, None,
                dict(embeddings))

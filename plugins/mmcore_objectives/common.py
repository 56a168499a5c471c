"""Helpers the objectives share: token widths, token lookup, metrics, example inputs."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from mmcore.contract import ModelOutput, Tokens
from mmcore.cost import CostContext


def token_width(explicit: int | None, name: str, widths: Mapping[str, int], key: str) -> int:
    """The width of tokens ``name``: the configured ``key`` or the builder's per-modality one."""
    if explicit is not None:
        return explicit
    if name in widths:
        return widths[name]
    raise ValueError(f"the width of tokens {name!r} is not known here; set {key}")


def cost_width(explicit: int | None, name: str, ctx: CostContext, key: str) -> int:
    """:func:`token_width` for cost functions (``ctx.shapes`` holds per-modality shapes)."""
    return token_width(explicit, name, {n: s.width for n, s in ctx.shapes.items()}, key)


def cost_tokens(name: str, ctx: CostContext) -> int:
    """Tokens per sample of ``name`` when ``ctx.shapes`` knows it, else 1 (a lower bound)."""
    shape = ctx.shapes.get(name)
    return shape.tokens if shape is not None else 1


def tokens_of(output: ModelOutput, name: str, objective: str) -> Tokens:
    """``output.tokens[name]``, or a ValueError naming what the output has."""
    if name not in output.tokens:
        raise ValueError(f"{objective}: the model output has no tokens {name!r}; it has "
                         f"{sorted(output.tokens)}")
    return output.tokens[name]


def check_width(tokens: Tokens, width: int, name: str, objective: str) -> None:
    if tokens.width != width:
        raise ValueError(f"{objective}: tokens {name!r} have width {tokens.width}, but the "
                         f"objective was built for {width}")


def accuracy(logits: Tensor, target: Tensor) -> Tensor:
    """Top-1 accuracy of ``logits (N, C)`` against ``target (N,)``, as a float scalar."""
    if target.numel() == 0:
        return logits.new_zeros(())
    return (logits.argmax(-1) == target).float().mean()


def example_tokens(batch: int, length: int, width: int, generator: torch.Generator) -> Tokens:
    """Random Tokens with padding masks (row 0 full, the others random lengths >= 1)."""
    x = torch.randn(batch, length, width, generator=generator)
    lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    lengths[0] = length
    return Tokens(x, torch.arange(length)[None, :] < lengths[:, None])

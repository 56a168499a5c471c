"""Normalisation layers by name."""

from __future__ import annotations

from torch import nn

NORMS = ("layernorm", "rmsnorm")


def make_norm(kind: str, width: int, eps: float = 1e-5) -> nn.Module:
    """``layernorm`` or ``rmsnorm`` over the last dimension."""
    if kind == "layernorm":
        return nn.LayerNorm(width, eps=eps)
    if kind == "rmsnorm":
        return nn.RMSNorm(width, eps=eps)
    raise ValueError(f"unknown norm {kind!r}; choose from {', '.join(NORMS)}")

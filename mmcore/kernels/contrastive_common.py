"""Input checks and small helpers shared by every contrastive-loss implementation.

Both :mod:`mmcore.kernels.contrastive` (reference, chunked) and
:mod:`mmcore.kernels.triton_contrastive` import from here, never from each other's privates.
Shapes: ``a: (M, D)``, ``b: (N, D)``; row ``i`` of ``a`` is positive with row
``row_offset + i`` of ``b``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

ContrastiveKind = Literal["softmax", "sigmoid"]


def check_contrastive_inputs(a: Tensor, b: Tensor, kind: str, logit_bias: Tensor | None,
                             row_offset: int) -> None:
    """Raise ValueError (one line) for shapes, offsets or options no implementation accepts."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need a: (M, D) and b: (N, D), got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] == 0:
        raise ValueError("a contrastive loss needs at least one row")
    if not 0 <= row_offset <= b.shape[0] - a.shape[0]:
        raise ValueError(f"row_offset {row_offset} puts the positives of {a.shape[0]} rows "
                         f"outside the {b.shape[0]} columns")
    if kind not in ("softmax", "sigmoid"):
        raise ValueError(f"kind must be 'softmax' or 'sigmoid', got {kind!r}")
    if kind == "softmax" and logit_bias is not None:
        raise ValueError("logit_bias cancels out of the softmax loss; use it with kind='sigmoid'")


def compute_dtype(a: Tensor) -> torch.dtype:
    """The dtype the losses are computed in: float32 at least (float64 stays float64)."""
    return torch.promote_types(a.dtype, torch.float32)


def as_scalar(value: Tensor | float, like: Tensor) -> Tensor:
    """A 0-dim tensor on ``like``'s device (kept in the autograd graph if it is a tensor)."""
    if isinstance(value, Tensor):
        return value.reshape(())
    return torch.tensor(float(value), device=like.device)


def blocks(n: int, block: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of at most ``block`` covering ``range(n)``."""
    return [(start, min(start + block, n)) for start in range(0, n, block)]


def positive_dots(a: Tensor, b: Tensor, row_offset: int, compute: torch.dtype,
                  block: int) -> Tensor:
    """a_i . b_{row_offset + i} for every row: (M,), computed a block of rows at a time."""
    parts = [(a[r0:r1].to(compute) * b[row_offset + r0:row_offset + r1].to(compute)).sum(1)
             for r0, r1 in blocks(a.shape[0], block)]
    return torch.cat(parts)

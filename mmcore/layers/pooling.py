"""Pool a token sequence to one vector: CLS (first), EOT (last real token), or masked mean."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from mmcore.contract import Tokens

PoolKind = Literal["cls", "eot", "mean"]


def pool(tokens: Tokens, kind: PoolKind) -> Tensor:
    """(B, N, D) -> (B, D). ``eot`` takes the last token the mask marks as real."""
    x, valid = tokens.x, tokens.valid()
    if kind == "cls":
        return x[:, 0]
    if kind == "eot":
        last = valid.long().sum(dim=1).clamp(min=1) - 1  # (B,)
        return x[torch.arange(x.shape[0], device=x.device), last]
    if kind == "mean":
        w = valid.to(x.dtype).unsqueeze(-1)  # (B, N, 1)
        return (x * w).sum(1) / w.sum(1).clamp(min=1.0)
    raise ValueError(f"unknown pooling {kind!r}; choose cls, eot or mean")

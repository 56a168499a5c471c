"""The learning-rate schedule: linear warmup, then cosine decay."""

from __future__ import annotations

import math


def lr_factor(step: int, *, total: int, warmup: int, min_ratio: float = 0.0) -> float:
    """LR multiplier for the update that makes step ``step + 1``: linear warmup over
    ``warmup`` updates, then cosine from 1 down to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

"""Learning-rate schedules: linear warmup, then cosine (default), linear, constant, or
warmup-stable-decay (flat, then a linear decay over the last fraction of the run)."""

from __future__ import annotations

import math

SCHEDULES: tuple[str, ...] = ("cosine", "linear", "constant", "wsd")


def lr_factor(step: int, *, total: int, warmup: int, min_ratio: float = 0.0,
              kind: str = "cosine", decay_fraction: float = 0.2) -> float:
    """LR multiplier for the update that makes step ``step + 1``: linear warmup over
    ``warmup`` updates, then ``kind`` from 1 down to ``min_ratio`` at ``total``.

    ``wsd`` stays at 1 until the last ``decay_fraction`` of ``total`` steps (at least the
    warmup's end), then falls linearly to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    if kind == "wsd":
        start = max(warmup, total - math.ceil(decay_fraction * total))
        progress = min(max(step - start, 0) / max(total - start, 1), 1.0)
        return min_ratio + (1.0 - min_ratio) * (1.0 - progress)
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    if kind == "linear":
        return min_ratio + (1.0 - min_ratio) * (1.0 - progress)
    if kind != "cosine":
        raise ValueError(f"unknown schedule {kind!r}; schedules are {', '.join(SCHEDULES)}")
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

"""Positional embeddings: learned, 1-D sinusoidal, and 2-D sinusoidal for patch grids."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class LearnedPositions(nn.Module):
    """A learned table ``(N, D)`` added to ``(B, n <= N, D)``."""

    def __init__(self, *, length: int, width: int, std: float = 0.01) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(length, width) * std)

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[1]
        if n > self.weight.shape[0]:
            raise ValueError(f"sequence of {n} tokens is longer than the {self.weight.shape[0]} "
                             "learned positions")
        return x + self.weight[:n]


def sinusoidal_positions(length: int, width: int, base: float = 10000.0) -> Tensor:
    """Fixed (length, width) table: sin on the first half of channels, cos on the second
    (the layout Whisper uses)."""
    if width % 2:
        raise ValueError(f"sinusoidal positions need an even width, got {width}")
    half = width // 2
    inv = torch.exp(-math.log(base) * torch.arange(half, dtype=torch.float64) / max(half - 1, 1))
    angles = torch.arange(length, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sinusoidal_positions_2d(height: int, width_cells: int, dim: int) -> Tensor:
    """Fixed (height * width_cells, dim) table for a patch grid: half the channels encode
    the row, half the column (MAE style)."""
    if dim % 4:
        raise ValueError(f"2-D sinusoidal positions need a width divisible by 4, got {dim}")
    rows = sinusoidal_positions(height, dim // 2)  # (H, dim/2)
    cols = sinusoidal_positions(width_cells, dim // 2)  # (W, dim/2)
    grid = torch.cat([rows[:, None, :].expand(-1, width_cells, -1),
                      cols[None, :, :].expand(height, -1, -1)], dim=-1)
    return grid.reshape(height * width_cells, dim)

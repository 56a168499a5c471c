"""Feed-forward block."""

from __future__ import annotations

import torch
from torch import Tensor, nn

ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu", "relu", "silu")


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), the activation of the original CLIP."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


def activation(name: str) -> nn.Module:
    """An activation module by name (one of ``ACTIVATIONS``)."""
    table: dict[str, nn.Module] = {
        "gelu": nn.GELU(),
        "gelu_tanh": nn.GELU(approximate="tanh"),
        "quick_gelu": QuickGELU(),
        "relu": nn.ReLU(),
        "silu": nn.SiLU(),
    }
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; choose from {', '.join(ACTIVATIONS)}")
    return table[name]


class MLP(nn.Module):
    """Linear -> activation -> Linear. (..., D) -> (..., out or D)."""

    def __init__(self, *, width: int, hidden: int, act: str = "gelu", out: int | None = None,
                 bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden, bias=bias)
        self.act = activation(act)
        self.fc2 = nn.Linear(hidden, out or width, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLU(nn.Module):
    """down(act(gate(x)) * up(x)), the gated MLP of LLaMA-family models. (..., D) -> (..., D).

    Parameter names (``gate_proj``, ``up_proj``, ``down_proj``) follow Hugging Face's."""

    def __init__(self, *, width: int, hidden: int, act: str = "silu", bias: bool = False) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(width, hidden, bias=bias)
        self.up_proj = nn.Linear(width, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, width, bias=bias)
        self.act = activation(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))

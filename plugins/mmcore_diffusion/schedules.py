"""The forward (noising) process: beta schedules, the noised sample, and what the denoiser
predicts (``epsilon`` or ``v``).

``alphas_cumprod[t] = prod_{s<=t} (1 - beta_s)`` (float32, as diffusers computes it). For
``x0, noise: (B, C, h, w)`` and ``t: (B,)``: ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise``;
the v target is ``sqrt(a_t) noise - sqrt(1 - a_t) x0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

#: beta schedule names (diffusers' ``beta_schedule`` values); "squaredcos_cap_v2" is cosine
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTIONS = ("epsilon", "v_prediction")


def cosine_betas(steps: int, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal's cosine schedule: ``(steps,)`` float32."""
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    return torch.tensor([min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), max_beta)
                         for i in range(steps)], dtype=torch.float32)


def make_betas(kind: str, steps: int, start: float = 1e-4, end: float = 0.02) -> Tensor:
    """``(steps,)`` float32 betas of schedule ``kind`` (one of :data:`BETA_SCHEDULES`)."""
    if kind == "linear":
        return torch.linspace(start, end, steps, dtype=torch.float32)
    if kind == "scaled_linear":
        return torch.linspace(start**0.5, end**0.5, steps, dtype=torch.float32) ** 2
    if kind in ("squaredcos_cap_v2", "cosine"):
        return cosine_betas(steps)
    raise ValueError(f"beta schedule {kind!r} is not implemented; known: "
                     f"{', '.join(BETA_SCHEDULES)}")


def _per_sample(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """``values[t]`` shaped to broadcast over ``like: (B, ...)``."""
    out = values.to(like.device)[t.to(like.device).long()].to(like.dtype)
    return out.reshape(-1, *([1] * (like.dim() - 1)))


@dataclass
class NoiseSchedule:
    """Betas and their cumulative products; the forward process and the training target."""

    betas: Tensor  # (T,)
    prediction_type: str = "epsilon"

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTIONS:
            raise ValueError(f"prediction_type {self.prediction_type!r} is not implemented; "
                             f"known: {', '.join(PREDICTIONS)}")
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)  # (T,)

    @classmethod
    def create(cls, kind: str = "scaled_linear", steps: int = 1000, start: float = 0.00085,
               end: float = 0.012, prediction_type: str = "epsilon") -> NoiseSchedule:
        return cls(make_betas(kind, steps, start, end), prediction_type)

    @property
    def train_steps(self) -> int:
        return int(self.betas.shape[0])

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """``x_t`` for clean ``x0`` and ``noise: (B, ...)`` at timesteps ``t: (B,)``."""
        a = _per_sample(self.alphas_cumprod, t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the denoiser is trained to output: the noise, or v."""
        if self.prediction_type == "epsilon":
            return noise
        a = _per_sample(self.alphas_cumprod, t, x0)
        return a.sqrt() * noise - (1 - a).sqrt() * x0

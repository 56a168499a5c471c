"""Samplers that run the reverse process: DDPM (ancestral), DDIM (deterministic at
``eta=0``) and Euler (discrete sigmas, as k-diffusion), each matching the diffusers
scheduler of the same name step for step.

Use: ``sampler.prepare(steps)``; start from ``noise * sampler.init_noise_sigma``; for each
index ``i`` and ``t = sampler.timesteps[i]``: ``out = denoiser(sampler.scale_input(x, i), t)``
then ``x = sampler.step(out, i, x)``. Latents are ``(B, C, h, w)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from mmcore_diffusion.schedules import NoiseSchedule

SPACINGS = ("leading", "trailing", "linspace")


def spaced_timesteps(train_steps: int, steps: int, spacing: str, offset: int = 0) -> np.ndarray:
    """The ``steps`` timesteps, descending, as diffusers spaces them (float64)."""
    if not 0 < steps <= train_steps:
        raise ValueError(f"steps must be in 1..{train_steps} (the training steps), got {steps}")
    if spacing == "linspace":
        return np.linspace(0, train_steps - 1, steps)[::-1].copy()
    if spacing == "leading":
        return (np.arange(0, steps) * (train_steps // steps)).round()[::-1] + offset
    if spacing == "trailing":
        return np.round(np.arange(train_steps, 0, -train_steps / steps)) - 1
    raise ValueError(f"timestep_spacing {spacing!r} is not implemented; known: "
                     f"{', '.join(SPACINGS)}")


def predict_x0(schedule: NoiseSchedule, out: Tensor, x: Tensor, a: Tensor) -> Tensor:
    """The clean sample implied by model output ``out`` at ``x`` with ``alpha_bar = a``."""
    if schedule.prediction_type == "epsilon":
        return (x - (1 - a) ** 0.5 * out) / a**0.5
    return a**0.5 * x - (1 - a) ** 0.5 * out


def _noise(like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)


@dataclass
class DiscreteSampler:
    """What DDPM and DDIM share: integer timesteps over a :class:`NoiseSchedule`."""

    schedule: NoiseSchedule
    spacing: str = "leading"
    steps_offset: int = 0
    clip_sample: float | None = None  # clamp the predicted x0 to +-this
    timesteps: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    init_noise_sigma: float = 1.0

    def prepare(self, steps: int) -> Tensor:
        """Choose the ``(steps,)`` timesteps of one sampling run (descending)."""
        self.timesteps = torch.from_numpy(spaced_timesteps(
            self.schedule.train_steps, steps, self.spacing, self.steps_offset).astype(np.int64))
        return self.timesteps

    def scale_input(self, x: Tensor, index: int) -> Tensor:
        return x

    def _x0(self, out: Tensor, x: Tensor, a: Tensor) -> Tensor:
        x0 = predict_x0(self.schedule, out, x, a)
        return x0 if self.clip_sample is None else x0.clamp(-self.clip_sample, self.clip_sample)


@dataclass
class DDPMSampler(DiscreteSampler):
    """Ancestral sampling: the posterior mean plus fixed small (or large) variance noise."""

    variance: str = "fixed_small"

    def step(self, out: Tensor, index: int, x: Tensor,
             generator: torch.Generator | None = None) -> Tensor:
        ac = self.schedule.alphas_cumprod
        t = int(self.timesteps[index])
        a = ac[t]
        a_prev = ac[int(self.timesteps[index + 1])] if index + 1 < len(self.timesteps) \
            else torch.tensor(1.0)
        alpha, beta = a / a_prev, 1 - a / a_prev
        x0 = self._x0(out, x, a)
        mean = (a_prev**0.5 * beta / (1 - a)) * x0 + (alpha**0.5 * (1 - a_prev) / (1 - a)) * x
        if t == 0:
            return mean
        var = beta if self.variance == "fixed_large" else \
            torch.clamp((1 - a_prev) / (1 - a) * beta, min=1e-20)
        return mean + var**0.5 * _noise(out, generator)


@dataclass
class DDIMSampler(DiscreteSampler):
    """DDIM: deterministic at ``eta = 0``, DDPM-like noise at ``eta = 1``."""

    eta: float = 0.0
    set_alpha_to_one: bool = True

    def step(self, out: Tensor, index: int, x: Tensor,
             generator: torch.Generator | None = None) -> Tensor:
        ac = self.schedule.alphas_cumprod
        t = int(self.timesteps[index])
        prev = t - self.schedule.train_steps // len(self.timesteps)
        final = torch.tensor(1.0) if self.set_alpha_to_one else ac[0]
        a, a_prev = ac[t], (ac[prev] if prev >= 0 else final)
        x0 = self._x0(out, x, a)
        eps = out if self.schedule.prediction_type == "epsilon" else \
            a**0.5 * out + (1 - a) ** 0.5 * x
        std = self.eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)) ** 0.5
        x_prev = a_prev**0.5 * x0 + (1 - a_prev - std**2) ** 0.5 * eps
        return x_prev + std * _noise(out, generator) if self.eta > 0 else x_prev


@dataclass
class EulerSampler:
    """Euler steps in sigma space (``x = x0 + sigma * eps``); inputs are scaled by
    ``1 / sqrt(sigma^2 + 1)`` before the denoiser, and timesteps may be fractional."""

    schedule: NoiseSchedule
    spacing: str = "linspace"
    steps_offset: int = 0
    timesteps: Tensor = field(default_factory=lambda: torch.zeros(0))
    sigmas: Tensor = field(default_factory=lambda: torch.zeros(0))

    def prepare(self, steps: int) -> Tensor:
        ac = self.schedule.alphas_cumprod
        timesteps = spaced_timesteps(self.schedule.train_steps, steps, self.spacing,
                                     self.steps_offset).astype(np.float32)
        all_sigmas = (((1 - ac) / ac) ** 0.5).numpy()
        sigmas = np.interp(timesteps, np.arange(0, len(all_sigmas)), all_sigmas)
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
        self.timesteps = torch.from_numpy(timesteps)
        return self.timesteps

    @property
    def init_noise_sigma(self) -> float:
        top = float(self.sigmas.max())
        return top if self.spacing in ("linspace", "trailing") else (top**2 + 1) ** 0.5

    def scale_input(self, x: Tensor, index: int) -> Tensor:
        return x / ((self.sigmas[index] ** 2 + 1) ** 0.5)

    def step(self, out: Tensor, index: int, x: Tensor,
             generator: torch.Generator | None = None) -> Tensor:
        sigma = self.sigmas[index]
        x = x.float()
        if self.schedule.prediction_type == "epsilon":
            x0 = x - sigma * out
        else:
            x0 = out * (-sigma / (sigma**2 + 1) ** 0.5) + x / (sigma**2 + 1)
        derivative = (x - x0) / sigma
        return (x + derivative * (self.sigmas[index + 1] - sigma)).to(out.dtype)


Sampler = DDPMSampler | DDIMSampler | EulerSampler

"""Samplers that run the reverse process: DDPM (ancestral), DDIM (deterministic at
``eta=0``), Euler (discrete sigmas, as k-diffusion) and DPM-Solver++(2M) (multistep), each
matching the diffusers scheduler of the same name step for step.

Use: ``sampler.prepare(steps)``; start from ``noise * sampler.init_noise_sigma``; for each
index ``i`` and ``t = sampler.timesteps[i]``: ``out = denoiser(sampler.scale_input(x, i), t)``
then ``x = sampler.step(out, i, x)``. Latents are ``(B, C, h, w)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmcore.errors import CheckpointError
from mmcore_diffusion.schedules import NoiseSchedule

SPACINGS = ("leading", "trailing", "linspace")
#: ``mmcore generate --sampler`` names -> the diffusers scheduler class each one follows
SAMPLER_NAMES = {"ddpm": "DDPMScheduler", "ddim": "DDIMScheduler",
                 "euler": "EulerDiscreteScheduler", "dpm++": "DPMSolverMultistepScheduler"}


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
        self.timesteps = torch.from_numpy(spaced_timesteps(  # linspace is rounded here
            self.schedule.train_steps, steps, self.spacing, self.steps_offset).round()
            .astype(np.int64))
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



# ----------------------------------------------------------------------------- DPM-Solver++

#: DPMSolverMultistepScheduler options mmcore implements only at these values
DPM_FIXED: dict[str, tuple[Any, ...]] = {
    "algorithm_type": ("dpmsolver++",), "solver_order": (1, 2),
    "solver_type": ("midpoint", "heun"), "prediction_type": ("epsilon", "v_prediction"),
    "final_sigmas_type": ("zero", "sigma_min"), "timestep_spacing": SPACINGS,
    "thresholding": (False,), "trained_betas": (None,), "variance_type": (None,),
    "use_karras_sigmas": (False,), "use_exponential_sigmas": (False,),
    "use_beta_sigmas": (False,), "use_lu_lambdas": (False,), "use_flow_sigmas": (False,),
    "rescale_betas_zero_snr": (False,), "use_dynamic_shifting": (False,)}


def dpm_timesteps(alphas_cumprod: Tensor, steps: int, spacing: str, offset: int = 0,
                  lambda_min_clipped: float = -math.inf) -> np.ndarray:
    """The ``(steps,)`` integer timesteps of DPM-Solver, descending. Its spacing differs
    from DDIM's: ``steps + 1`` points with the last (t = 0) dropped, and timesteps whose
    log-SNR ``lambda`` is below ``lambda_min_clipped`` are never visited."""
    train_steps = int(alphas_cumprod.shape[0])
    if not 0 < steps <= train_steps:
        raise ValueError(f"steps must be in 1..{train_steps} (the training steps), got {steps}")
    lam = torch.log(alphas_cumprod.sqrt()) - torch.log((1 - alphas_cumprod).sqrt())
    clipped = int(torch.searchsorted(torch.flip(lam, [0]), lambda_min_clipped))
    last = train_steps - clipped
    t: np.ndarray
    if spacing == "linspace":
        t = np.linspace(0, last - 1, steps + 1).round()[::-1][:-1]
    elif spacing == "leading":
        t = (np.arange(0, steps + 1) * (last // (steps + 1))).round()[::-1][:-1] + offset
    elif spacing == "trailing":
        t = np.arange(last, 0, -train_steps / steps).round() - 1
    else:
        raise ValueError(f"timestep_spacing {spacing!r} is not implemented; known: "
                         f"{', '.join(SPACINGS)}")
    return t.astype(np.int64)


@dataclass
class DPMSolverSampler:
    """DPM-Solver++ (Lu et al. 2022), multistep, deterministic: order 2 ("2M") by default,
    as diffusers' ``DPMSolverMultistepScheduler`` with ``algorithm_type="dpmsolver++"``.

    The solver integrates the data prediction ``x0(x, sigma)`` in log-SNR
    ``lambda = -log(sigma)`` (``sigma = sqrt((1 - a) / a)``). The first step is first
    order (no earlier prediction yet); so is the last when ``final_sigmas_type`` is
    "zero", with ``euler_at_final``, or with ``lower_order_final`` below 15 steps.
    Latents ``(B, C, h, w)`` are not scaled on input (``scale_input`` is the identity).
    """

    schedule: NoiseSchedule
    order: int = 2
    solver_type: str = "midpoint"
    spacing: str = "linspace"
    steps_offset: int = 0
    lower_order_final: bool = True
    euler_at_final: bool = False
    final_sigmas_type: str = "zero"
    lambda_min_clipped: float = -math.inf
    timesteps: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    sigmas: Tensor = field(default_factory=lambda: torch.zeros(0))
    init_noise_sigma: float = 1.0
    _x0: list[Tensor] = field(default_factory=list, repr=False)

    def prepare(self, steps: int) -> Tensor:
        """Choose the ``(steps,)`` timesteps and the ``(steps + 1,)`` sigmas of one run."""
        ac = self.schedule.alphas_cumprod
        t = dpm_timesteps(ac, steps, self.spacing, self.steps_offset, self.lambda_min_clipped)
        all_sigmas = (((1 - ac) / ac) ** 0.5).numpy()
        sigmas = np.interp(t, np.arange(0, len(all_sigmas)), all_sigmas)
        last = float(((1 - ac[0]) / ac[0]) ** 0.5) if self.final_sigmas_type == "sigma_min" \
            else 0.0
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [last]]).astype(np.float32))
        self.timesteps = torch.from_numpy(t)
        self._x0 = []
        return self.timesteps

    def scale_input(self, x: Tensor, index: int) -> Tensor:
        return x

    def _alpha_sigma(self, index: int) -> tuple[float, float]:
        """(alpha_t, sigma_t) of the variance-preserving process at sigmas[index]."""
        s = float(self.sigmas[index])
        alpha = 1 / math.sqrt(s * s + 1)
        return alpha, s * alpha

    def step(self, out: Tensor, index: int, x: Tensor,
             generator: torch.Generator | None = None) -> Tensor:
        """One solver step from ``x`` at ``timesteps[index]`` to the next noise level, given
        the model output ``out`` there (steps must be taken in order after prepare)."""
        n = len(self.timesteps)
        work = torch.promote_types(x.dtype, torch.float32)
        alpha_s, sigma_s = self._alpha_sigma(index)
        xw, ow = x.to(work), out.to(work)
        if self.schedule.prediction_type == "epsilon":
            x0 = (xw - sigma_s * ow) / alpha_s
        else:
            x0 = alpha_s * xw - sigma_s * ow
        self._x0 = [*self._x0[-1:], x0]
        alpha_t, sigma_t = self._alpha_sigma(index + 1)
        final = index == n - 1 and (self.euler_at_final or self.final_sigmas_type == "zero"
                                    or (self.lower_order_final and n < 15))
        if sigma_t == 0.0:  # the last step to sigma 0 lands on the prediction itself
            return x0.to(out.dtype)
        def lam(j: int) -> float:  # log-SNR: log(alpha / sigma) = -log(sigmas[j])
            return -math.log(float(self.sigmas[j]))

        h = lam(index + 1) - lam(index)
        phi = math.expm1(-h)  # exp(-h) - 1
        prev = (sigma_t / sigma_s) * xw - (alpha_t * phi) * x0
        if self.order >= 2 and len(self._x0) == 2 and not final:
            r = (lam(index) - lam(index - 1)) / h
            d1 = (x0 - self._x0[0]) / r
            if self.solver_type == "midpoint":
                prev = prev - 0.5 * (alpha_t * phi) * d1
            else:
                prev = prev + (alpha_t * (phi / h + 1.0)) * d1
        return prev.to(out.dtype)


def _check_options(cfg: Mapping[str, Any], fixed: Mapping[str, tuple[Any, ...]],
                   where: str) -> None:
    for key, allowed in fixed.items():
        if key in cfg and cfg[key] not in allowed:
            raise CheckpointError(f"{where}: {key}={cfg[key]!r} is not implemented by mmcore "
                                  f"(supported: {', '.join(repr(a) for a in allowed)})")


def dpm_solver_from_config(cfg: Mapping[str, Any], where: str) -> DPMSolverSampler:
    """A ``DPMSolverMultistepScheduler`` config -> :class:`DPMSolverSampler`; options mmcore
    does not implement (order 3, SDE variants, Karras sigmas, thresholding, ...) raise
    :class:`~mmcore.errors.CheckpointError` naming the option."""
    _check_options(cfg, DPM_FIXED, where)
    lam = cfg.get("lambda_min_clipped", -math.inf)
    schedule = NoiseSchedule.create(
        cfg.get("beta_schedule", "linear"), cfg.get("num_train_timesteps", 1000),
        cfg.get("beta_start", 1e-4), cfg.get("beta_end", 0.02),
        cfg.get("prediction_type", "epsilon"))
    return DPMSolverSampler(
        schedule, order=cfg.get("solver_order", 2), solver_type=cfg.get("solver_type", "midpoint"),
        spacing=cfg.get("timestep_spacing", "linspace"), steps_offset=cfg.get("steps_offset", 0),
        lower_order_final=cfg.get("lower_order_final", True),
        euler_at_final=cfg.get("euler_at_final", False),
        final_sigmas_type=cfg.get("final_sigmas_type", "zero"),
        lambda_min_clipped=-math.inf if lam is None else float(lam))


Sampler = DDPMSampler | DDIMSampler | EulerSampler | DPMSolverSampler

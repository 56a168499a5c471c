"""Schedules and samplers (plugins/mmcore_diffusion) against diffusers' schedulers: from
the same config and the same sequence of model outputs, the same latents within 1e-5."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

import mmcore
from mmcore.builder import build
from mmcore.checkpoint import save
from mmcore.cli import main
from mmcore.errors import CheckpointError
from mmcore_diffusion.convert import sampler_from_config
from mmcore_diffusion.generate import generate_images, to_pil
from mmcore_diffusion.schedules import NoiseSchedule

diffusers = pytest.importorskip("diffusers")

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
          num_train_timesteps=1000, clip_sample=False, steps_offset=1)
CASES = [
    ("DDIMScheduler", SD | {"set_alpha_to_one": False}),
    ("DDIMScheduler", {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction",
                       "timestep_spacing": "trailing"}),
    ("DDPMScheduler", SD),
    ("DDPMScheduler", {"beta_schedule": "linear", "variance_type": "fixed_large",
                       "prediction_type": "v_prediction"}),
    ("EulerDiscreteScheduler", {k: v for k, v in SD.items() if k != "clip_sample"}
     | {"timestep_spacing": "leading"}),
    ("EulerDiscreteScheduler", {"beta_schedule": "linear", "prediction_type": "v_prediction"}),
]


@pytest.mark.parametrize(("name", "options"), CASES)
def test_sampler_steps_match_diffusers(name: str, options: dict) -> None:
    ref = getattr(diffusers, name)(**options)
    ours = sampler_from_config({"_class_name": name, **ref.config})
    ref.set_timesteps(10)
    ours.prepare(10)
    torch.testing.assert_close(ours.timesteps.double(), ref.timesteps.double())
    torch.manual_seed(0)
    start = torch.randn(2, 4, 8, 8)
    x_ref, x_ours = start * ref.init_noise_sigma, start * ours.init_noise_sigma
    g_ref, g_ours = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for i, t in enumerate(ref.timesteps):
        torch.testing.assert_close(ours.scale_input(x_ours, i), ref.scale_model_input(x_ref, t),
                                   atol=1e-5, rtol=0)
        out = torch.randn(2, 4, 8, 8)  # a stand-in model output, the same for both
        x_ref = ref.step(out, t, x_ref, generator=g_ref).prev_sample
        x_ours = ours.step(out, i, x_ours, generator=g_ours)
        torch.testing.assert_close(x_ours, x_ref, atol=1e-5, rtol=1e-5)


def test_unknown_scheduler_refused_by_name() -> None:
    with pytest.raises(CheckpointError, match="PNDMScheduler"):
        sampler_from_config({"_class_name": "PNDMScheduler"})
    with pytest.raises(CheckpointError, match="use_karras_sigmas"):
        sampler_from_config({"_class_name": "EulerDiscreteScheduler", "use_karras_sigmas": True})
    ddim = sampler_from_config({"_class_name": "PNDMScheduler", **SD}, cls="DDIMScheduler")
    assert ddim.prepare(5).tolist() == [801, 601, 401, 201, 1]


def test_forward_process_matches_diffusers() -> None:
    ref = diffusers.DDPMScheduler(**SD, prediction_type="v_prediction")
    ours = NoiseSchedule.create("scaled_linear", 1000, 0.00085, 0.012, "v_prediction")
    x0, noise, t = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.tensor([0, 500, 999])
    torch.testing.assert_close(ours.add_noise(x0, noise, t), ref.add_noise(x0, noise, t))
    torch.testing.assert_close(ours.target(x0, noise, t), ref.get_velocity(x0, noise, t))


SD_DPM = {k: v for k, v in SD.items() if k != "clip_sample"}
DPM_CASES = [
    ({}, 10),  # diffusers' defaults: linear betas, linspace spacing, final sigma 0
    (SD_DPM | {"prediction_type": "epsilon"}, 25),  # Stable Diffusion's schedule
    (SD_DPM | {"prediction_type": "v_prediction", "timestep_spacing": "trailing"}, 10),
    ({"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction",
      "lambda_min_clipped": -5.1}, 25),
    (SD_DPM | {"final_sigmas_type": "sigma_min", "solver_type": "heun"}, 25),
    (SD_DPM | {"euler_at_final": True, "lower_order_final": False, "timestep_spacing": "leading"},
     10),
]


def _model(x: torch.Tensor, t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """A fixed stand-in denoiser, linear in x and t: mixes channels and adds a t-dependent
    pattern. ``x: (B, C, h, w)`` float64 -> the same shape."""
    return 0.8 * torch.einsum("oc,bchw->bohw", w, x) + (float(t) / 1000.0) * x.flip(-1) * 0.1


@pytest.mark.parametrize(("options", "steps"), DPM_CASES)
def test_dpm_solver_loop_matches_diffusers(options: dict, steps: int) -> None:
    """The whole DPM-Solver++(2M) loop in float64 with one fixed model function: mmcore's
    sampler and diffusers' DPMSolverMultistepScheduler give the same latents at every step."""
    ref = diffusers.DPMSolverMultistepScheduler(**options)
    ours = sampler_from_config({"_class_name": "DPMSolverMultistepScheduler", **ref.config})
    ref.set_timesteps(steps)
    ours.prepare(steps)
    assert ours.timesteps.tolist() == ref.timesteps.tolist()
    gen = torch.Generator().manual_seed(0)
    w = torch.eye(4, dtype=torch.float64) + 0.05 * torch.randn(4, 4, generator=gen,
                                                               dtype=torch.float64)
    x_ref = torch.randn(2, 4, 8, 8, generator=gen, dtype=torch.float64)
    x_ours = x_ref.clone() * ours.init_noise_sigma
    x_ref = x_ref * ref.init_noise_sigma
    for i, t in enumerate(ref.timesteps):
        x_ref = ref.step(_model(ref.scale_model_input(x_ref, t), t, w), t, x_ref).prev_sample
        x_ours = ours.step(_model(ours.scale_input(x_ours, i), ours.timesteps[i], w), i, x_ours)
        torch.testing.assert_close(x_ours, x_ref, atol=1e-5, rtol=1e-5)
    assert x_ours.dtype == torch.float64
    assert x_ours.abs().max() > 0.1  # a real sample, not a collapsed one


def test_dpm_solver_unimplemented_options_refused_by_name() -> None:
    for option, value in [("solver_order", 3), ("algorithm_type", "sde-dpmsolver++"),
                          ("use_karras_sigmas", True), ("thresholding", True),
                          ("prediction_type", "sample"), ("use_lu_lambdas", True)]:
        with pytest.raises(CheckpointError, match=option):
            sampler_from_config({"_class_name": "DPMSolverMultistepScheduler", option: value})
    # a DPM-Solver config read as DDIM (``--sampler ddim``), as diffusers' from_config does
    saved = {k: v for k, v in diffusers.DPMSolverMultistepScheduler(**SD_DPM).config.items()
             if k != "_use_default_values"}  # as scheduler_config.json holds it
    ddim = sampler_from_config({"_class_name": "DPMSolverMultistepScheduler", **saved},
                               cls="DDIMScheduler")
    ref = diffusers.DDIMScheduler.from_config(saved)
    ref.set_timesteps(5)
    assert ddim.prepare(5).tolist() == ref.timesteps.tolist()


def test_generate_sampler_option_picks_the_sampler(tmp_path: Path) -> None:
    """``mmcore generate --sampler dpm++`` samples ldm-tiny (a DDIM scheduler config) with
    DPM-Solver++: the PNG equals generate_images(sampler="DPMSolverMultistepScheduler")
    and differs from the default (DDIM) one."""
    torch.manual_seed(0)
    path = tmp_path / "ldm.safetensors"
    save(build(mmcore.load_spec("ldm-tiny")), path)
    written = {}
    for name in ("ddim", "dpm++"):
        argv = ["generate", str(path), "--prompt", "a red star", "--steps", "3",
                "--seed", "0", "--out", str(tmp_path / name)]
        assert main([*argv, "--sampler", name] if name != "ddim" else argv) == 0
        written[name] = (tmp_path / name / "a-red-star-000.png").read_bytes()
    assert written["ddim"] != written["dpm++"]
    images = generate_images(mmcore.load(path), ["a red star"], steps=3, seed=0,
                             sampler="DPMSolverMultistepScheduler")
    buffer = io.BytesIO()
    to_pil(images[0]).save(buffer, format="PNG")
    assert buffer.getvalue() == written["dpm++"]

"""Schedules and samplers (plugins/mmcore_diffusion) against diffusers' schedulers: from
the same config and the same sequence of model outputs, the same latents within 1e-5."""

from __future__ import annotations

import pytest
import torch

from mmcore.errors import CheckpointError
from mmcore_diffusion.convert import sampler_from_config
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

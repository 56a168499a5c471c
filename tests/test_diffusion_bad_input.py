"""Bad input to latent diffusion gives one clear error: ValueError / mmcore errors from
Python, one line (no traceback) from the CLI. Covered elsewhere and not repeated here: an
unknown scheduler class at import (test_diffusion_registered), unknown U-Net/VAE block types
(test_diffusion_models), unimplemented scheduler options (test_diffusion_samplers)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import mmcore
from mmcore.builder import build
from mmcore.checkpoint import save
from mmcore.cli import main
from mmcore.convert import import_model
from mmcore.errors import CheckpointError, SpecError
from mmcore_diffusion.convert import sampler_from_config
from mmcore_diffusion.denoisers import SD_SCHEDULER
from mmcore_diffusion.pipeline import sample_latents

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
from test_diffusion_registered import sd_folder  # noqa: E402, F401  (the fixture)


def _one_line_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err


def test_guidance_without_an_unconditional_embedding() -> None:
    """sample_latents with a guidance scale but no unconditional text: ValueError before
    any denoising step runs; a negative scale is refused too."""
    calls = []

    def denoise(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        calls.append(t)
        return torch.zeros_like(x)

    ddim = sampler_from_config(SD_SCHEDULER)
    latents, cond = torch.randn(1, 4, 8, 8), torch.randn(1, 5, 16)
    with pytest.raises(ValueError, match=r"guidance scale 4\.0 needs an unconditional"):
        sample_latents(denoise, ddim, latents, cond, uncond=None, steps=3, guidance=4.0)
    with pytest.raises(ValueError, match="guidance scale must be >= 0"):
        sample_latents(denoise, ddim, latents, cond, uncond=cond, steps=3, guidance=-2.0)
    assert calls == []
    out = sample_latents(denoise, ddim, latents, cond, uncond=None, steps=3, guidance=1.0)
    assert out.shape == latents.shape and len(calls) == 3


def test_generate_refuses_a_negative_guidance_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(0)
    model = tmp_path / "ldm.safetensors"
    save(build(mmcore.load_spec("ldm-tiny")), model)
    assert main(["generate", str(model), "--prompt", "x", "--steps", "2", "--guidance", "-1",
                 "--out", str(tmp_path / "out")]) != 0
    err = _one_line_error(capsys)
    assert err.splitlines()[-1].endswith("guidance scale must be >= 0 (1 or less: no "
                                         "guidance), got -1.0")
    assert not list((tmp_path / "out").glob("*.png"))


def test_image_size_the_codec_does_not_divide_is_refused_at_build() -> None:
    """ldm-tiny's codec halves twice (factor 4): image_size 30 fails when the spec is
    built, naming both sizes and the key path, instead of on the first batch."""
    spec = mmcore.load_spec("ldm-tiny", ["modalities.image.tokenizer.image_size=30"])
    with pytest.raises(SpecError) as info:
        build(spec, device="meta")
    text = str(info.value)
    assert "modalities.image.tokenizer" in text
    assert "image_size 30 is not divisible by 4, the codec's downsampling factor" in text


def test_validate_names_the_sizes(capsys: pytest.CaptureFixture) -> None:
    assert main(["validate", "ldm-tiny", "modalities.image.tokenizer.image_size=30"]) != 0
    err = _one_line_error(capsys)
    assert "image_size 30 is not divisible by 4" in err


@pytest.mark.parametrize(("option", "value"), [("solver_order", 3),
                                               ("algorithm_type", "sde-dpmsolver++"),
                                               ("use_karras_sigmas", True)])
def test_import_refuses_unimplemented_dpm_solver_options_by_name(
        sd_folder: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture,  # noqa: F811
        option: str, value: object) -> None:
    """A diffusers folder whose DPMSolverMultistepScheduler uses an option mmcore does
    not implement: CheckpointError naming it from Python, one line from ``mmcore import``;
    the default options import."""
    folder, _ = sd_folder
    path = folder / "scheduler" / "scheduler_config.json"
    base = {k: v for k, v in diffusers.DPMSolverMultistepScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).config.items()
        if k != "_use_default_values"}
    path.write_text(json.dumps({"_class_name": "DPMSolverMultistepScheduler", **base,
                                option: value}))
    with pytest.raises(CheckpointError, match=re.escape(f"{option}={value!r} is not implemented")):
        import_model(folder)
    assert main(["import", str(folder), "--out", str(tmp_path / "sd.safetensors")]) != 0
    err = _one_line_error(capsys)
    assert len(err.splitlines()) == 1 and option in err

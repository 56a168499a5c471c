"""Latent diffusion models (plugins/mmcore_diffusion): the U-Net and the KL autoencoder
imported from tiny random diffusers models saved with ``save_pretrained``, compared within
1e-4 (fp32), plus the refusals of what mmcore does not implement, and the analytic
parameter counts of SD v1's U-Net and VAE."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmcore.errors import CheckpointError
from mmcore_diffusion.convert import load_unet, load_vae, unet_config, vae_config

diffusers = pytest.importorskip("diffusers")

TOL = 1e-4


def tiny_unet(folder: Path, **overrides: object) -> object:
    torch.manual_seed(0)
    cfg = dict(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
               attention_head_dim=8, sample_size=8, in_channels=4, out_channels=4,
               down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
               up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    cfg.update(overrides)
    model = diffusers.UNet2DConditionModel(**cfg).eval()
    _randomise(model)
    model.save_pretrained(folder)
    return model


def tiny_vae(folder: Path) -> object:
    torch.manual_seed(1)
    model = diffusers.AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=32, sample_size=16).eval()
    _randomise(model)
    model.save_pretrained(folder)
    return model


def _randomise(model: torch.nn.Module) -> None:
    """Perturb every parameter (zero-initialised convs and norms would hide mistakes)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)


@pytest.mark.parametrize("linear", [False, True])
def test_unet_noise_prediction_matches_diffusers(tmp_path: Path, linear: bool) -> None:
    ref = tiny_unet(tmp_path / "unet", use_linear_projection=linear)
    ours = load_unet(tmp_path / "unet")
    sample = torch.randn(2, 4, 8, 8)
    context = torch.randn(2, 5, 32)
    timesteps = torch.tensor([10, 700])
    with torch.no_grad():
        want = ref(sample, timesteps, encoder_hidden_states=context).sample
        got = ours(sample, timesteps, context)
    assert got.shape == want.shape == (2, 4, 8, 8)
    torch.testing.assert_close(got, want, atol=TOL, rtol=0)


def test_vae_encode_decode_match_diffusers(tmp_path: Path) -> None:
    ref = tiny_vae(tmp_path / "vae")
    ours = load_vae(tmp_path / "vae")
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        want = ref.encode(images).latent_dist
        got = ours.encode(images)
        torch.testing.assert_close(got.mean, want.mean, atol=TOL, rtol=0)
        torch.testing.assert_close(got.logvar, want.logvar, atol=TOL, rtol=0)
        latents = torch.randn(2, 4, 8, 8)
        torch.testing.assert_close(ours.decode(latents), ref.decode(latents).sample,
                                   atol=TOL, rtol=0)
    assert ours.cfg.scaling_factor == ref.config.scaling_factor


def test_unknown_block_types_refused_by_name(tmp_path: Path) -> None:
    tiny_unet(tmp_path / "unet")
    cfg = json.loads((tmp_path / "unet" / "config.json").read_text())
    cfg["down_block_types"] = ["CrossAttnDownBlock2D", "ResnetDownsampleBlock2D"]
    with pytest.raises(CheckpointError, match="ResnetDownsampleBlock2D"):
        unet_config(cfg)
    with pytest.raises(CheckpointError, match="class_embed_type"):
        unet_config({**json.loads((tmp_path / "unet" / "config.json").read_text()),
                     "class_embed_type": "timestep"})
    with pytest.raises(CheckpointError, match="VQModel"):
        vae_config({"_class_name": "VQModel"})


def test_size_not_divisible_refused(tmp_path: Path) -> None:
    tiny_vae(tmp_path / "vae")
    vae = load_vae(tmp_path / "vae")
    with pytest.raises(ValueError, match="not divisible by 2"):
        vae.encode(torch.randn(1, 3, 15, 16))

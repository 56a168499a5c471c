"""Parameter counts of Stable Diffusion v1's U-Net and VAE: built on the meta device from
mmcore's modules and computed analytically, both equal diffusers' figures."""

from __future__ import annotations

import pytest
import torch

import mmcore
from mmcore.analysis import analyse
from mmcore.cli import main
from mmcore_diffusion.cost import sampling_memory, unet_parameters, vae_parameters
from mmcore_diffusion.unet import UNet2DCondition, UNetConfig
from mmcore_diffusion.vae import AutoencoderKL, VAEConfig

SD1_UNET = 859_520_964
SD1_VAE = 83_653_863


def test_sd1_unet_parameters() -> None:
    cfg = UNetConfig()  # SD v1: (320, 640, 1280, 1280), 2 layers, 8 heads, context 768
    with torch.device("meta"):
        model = UNet2DCondition(cfg)
    assert sum(p.numel() for p in model.parameters()) == SD1_UNET
    assert unet_parameters(cfg) == SD1_UNET


def test_sd1_vae_parameters() -> None:
    cfg = VAEConfig()  # SD v1: (128, 256, 512, 512), 2 layers, 4 latent channels
    with torch.device("meta"):
        model = AutoencoderKL(cfg)
    assert sum(p.numel() for p in model.parameters()) == SD1_VAE
    assert vae_parameters(cfg) == SD1_VAE


def test_analytic_counts_follow_other_configs() -> None:
    unet = UNetConfig(block_out_channels=(32, 64), down_attention=(True, False),
                      up_attention=(False, True), layers_per_block=1, heads=(2, 2),
                      cross_attention_dim=32, linear_projection=True, transformer_depth=2)
    vae = VAEConfig(block_out_channels=(32, 64), layers_per_block=1, mid_block_attention=False)
    with torch.device("meta"):
        assert unet_parameters(unet) == sum(p.numel() for p in UNet2DCondition(unet).parameters())
        assert vae_parameters(vae) == sum(p.numel() for p in AutoencoderKL(vae).parameters())


def test_inspect_prints_denoising_step_and_sampling_memory(
        capsys: pytest.CaptureFixture) -> None:
    """The figures the unet cost function offers (mmcore.cost.Figure) reach ``mmcore
    inspect``: FLOPs of one step at 64x64 latents, and sampling memory at batch 1 and 8 =
    the whole model's fp32 weights + the U-Net's working set (sampling_memory)."""
    weights = 1_066_235_307  # every parameter of the model, not only the U-Net's
    assert sampling_memory(weights, UNetConfig(), 64, 1) == 5_437_642_412
    assert main(["inspect", "stable-diffusion-v1"]) == 0
    out = capsys.readouterr().out
    assert ("fusion: one denoising step per image (64x64 latents, 77 text tokens, unguided): "
            "803.27 GFLOP (803,273,441,280 FLOP)") in out
    assert "sampling memory at batch 1 (guided, fp32): 5.06 GiB (5,437,642,412 B)" in out
    assert "sampling memory at batch 8 (guided, fp32): 12.71 GiB (13,646,550,700 B)" in out
    figures = analyse(mmcore.load_spec("stable-diffusion-v1")).figures  # what --json prints
    assert [(f["component"], f["unit"], f["value"]) for f in figures] == [
        ("fusion", "FLOP", 803_273_441_280), ("fusion", "B", 5_437_642_412),
        ("fusion", "B", 13_646_550_700)]

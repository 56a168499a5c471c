"""Parameter counts of Stable Diffusion v1's U-Net and VAE: built on the meta device from
mmcore's modules and computed analytically, both equal diffusers' figures."""

from __future__ import annotations

import torch

from mmcore_diffusion.cost import unet_parameters, vae_parameters
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

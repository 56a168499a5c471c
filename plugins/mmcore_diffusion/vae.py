"""The KL autoencoder (Stable Diffusion's VAE; diffusers' ``AutoencoderKL``): an image codec
with continuous latents.

``encode(images: (B, 3, H, W))`` -> :class:`LatentDistribution` with ``mean, logvar:
(B, C_lat, H/f, W/f)``, ``f = 2 ** (levels - 1)``; ``decode(latents: (B, C_lat, h, w))`` ->
images ``(B, 3, h*f, w*f)`` in [-1, 1] (unclamped). The diffusion model works on
``latent * scaling_factor`` (:meth:`AutoencoderKL.scale` / :meth:`AutoencoderKL.unscale`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcore.kernels import KernelSet, select_kernels
from mmcore_diffusion.unet_blocks import Attention, Downsample2D, ResnetBlock2D, Upsample2D

EPS = 1e-6


@dataclass(frozen=True)
class VAEConfig:
    """The autoencoder's shape (SD v1's by default)."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_attention: bool = True

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass
class LatentDistribution:
    """A diagonal Gaussian over latents: ``mean, logvar: (B, C_lat, h, w)``."""

    mean: Tensor
    logvar: Tensor

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype,
                            device=self.mean.device)
        return self.mean + torch.exp(0.5 * self.logvar) * noise

    def kl(self) -> Tensor:
        """KL to N(0, I) per sample: ``(B,)``."""
        return 0.5 * (self.mean**2 + self.logvar.exp() - 1.0 - self.logvar).sum(dim=(1, 2, 3))


class SpatialSelfAttention(nn.Module):
    """Single-head self-attention over all positions of ``(B, C, H, W)``, GroupNorm first,
    residual after (the VAE's mid-block attention)."""

    def __init__(self, *, channels: int, groups: int, kernels: KernelSet) -> None:
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=EPS)
        self.attn = Attention(dim=channels, heads=1, head_dim=channels, kernels=kernels,
                              qkv_bias=True)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        tokens = self.group_norm(x).view(b, c, h * w).transpose(1, 2)  # (B, HW, C)
        out = self.attn(tokens).transpose(1, 2).reshape(b, c, h, w)
        return out + x


def _resnet(cfg: VAEConfig, cin: int, cout: int) -> ResnetBlock2D:
    return ResnetBlock2D(in_channels=cin, out_channels=cout, groups=cfg.norm_num_groups,
                         eps=EPS, temb_channels=None)


class MidBlock(nn.Module):
    """ResNet, self-attention, ResNet."""

    def __init__(self, cfg: VAEConfig, *, kernels: KernelSet) -> None:
        super().__init__()
        c = cfg.block_out_channels[-1]
        self.resnets = nn.ModuleList([_resnet(cfg, c, c), _resnet(cfg, c, c)])
        self.attentions = nn.ModuleList(
            [SpatialSelfAttention(channels=c, groups=cfg.norm_num_groups, kernels=kernels)]
            if cfg.mid_block_attention else [])

    def forward(self, x: Tensor) -> Tensor:
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)


class CodecBlock(nn.Module):
    """ResNet blocks, then an optional resampler (down in the encoder, up in the decoder)."""

    def __init__(self, cfg: VAEConfig, *, cin: int, cout: int, layers: int,
                 resample: nn.Module | None, name: str) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(_resnet(cfg, cin if i == 0 else cout, cout)
                                     for i in range(layers))
        setattr(self, name, nn.ModuleList([] if resample is None else [resample]))
        self._resamplers = name

    def forward(self, x: Tensor) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        for resample in getattr(self, self._resamplers):
            x = resample(x)
        return x


def _head(cfg: VAEConfig, cin: int, cout: int) -> tuple[nn.GroupNorm, nn.Conv2d]:
    return nn.GroupNorm(cfg.norm_num_groups, cin, eps=EPS), nn.Conv2d(cin, cout, 3, padding=1)


class Encoder(nn.Module):
    """Images ``(B, 3, H, W)`` -> moments ``(B, 2 * C_lat, H/f, W/f)``."""

    def __init__(self, cfg: VAEConfig, *, kernels: KernelSet) -> None:
        super().__init__()
        ch = cfg.block_out_channels
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            CodecBlock(cfg, cin=ch[max(i - 1, 0)], cout=ch[i], layers=cfg.layers_per_block,
                       resample=None if i == len(ch) - 1 else Downsample2D(channels=ch[i],
                                                                           padding=0),
                       name="downsamplers")
            for i in range(len(ch)))
        self.mid_block = MidBlock(cfg, kernels=kernels)
        self.conv_norm_out, self.conv_out = _head(cfg, ch[-1], 2 * cfg.latent_channels)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    """Latents ``(B, C_lat, h, w)`` -> images ``(B, 3, h*f, w*f)``."""

    def __init__(self, cfg: VAEConfig, *, kernels: KernelSet) -> None:
        super().__init__()
        rev = list(reversed(cfg.block_out_channels))
        self.conv_in = nn.Conv2d(cfg.latent_channels, rev[0], 3, padding=1)
        self.mid_block = MidBlock(cfg, kernels=kernels)
        self.up_blocks = nn.ModuleList(
            CodecBlock(cfg, cin=rev[max(i - 1, 0)], cout=rev[i], layers=cfg.layers_per_block + 1,
                       resample=None if i == len(rev) - 1 else Upsample2D(channels=rev[i]),
                       name="upsamplers")
            for i in range(len(rev)))
        self.conv_norm_out, self.conv_out = _head(cfg, rev[-1], cfg.out_channels)

    def forward(self, z: Tensor) -> Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class AutoencoderKL(nn.Module):
    """The KL image codec: :meth:`encode` to a latent Gaussian, :meth:`decode` back."""

    def __init__(self, cfg: VAEConfig, *, kernels: KernelSet | None = None) -> None:
        super().__init__()
        kernels = kernels if kernels is not None else select_kernels()
        self.cfg = cfg
        self.downsampling = cfg.downsampling  # image side / latent side
        self.latent_channels = cfg.latent_channels
        self.encoder = Encoder(cfg, kernels=kernels)
        self.decoder = Decoder(cfg, kernels=kernels)
        lat = cfg.latent_channels
        self.quant_conv = nn.Conv2d(2 * lat, 2 * lat, 1) if cfg.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(lat, lat, 1) if cfg.use_post_quant_conv else None

    def check_size(self, height: int, width: int) -> None:
        """ValueError unless the codec's downsampling factor divides the image size."""
        f = self.cfg.downsampling
        if height % f or width % f:
            raise ValueError(f"image size {height}x{width} is not divisible by {f}, the "
                             "autoencoder's downsampling factor")

    def encode(self, images: Tensor) -> LatentDistribution:
        """``(B, 3, H, W)`` in [-1, 1] -> the latent Gaussian ``(B, C_lat, H/f, W/f)``."""
        self.check_size(images.shape[-2], images.shape[-1])
        moments = self.encoder(images)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, logvar = moments.chunk(2, dim=1)
        return LatentDistribution(mean, logvar.clamp(-30.0, 20.0))

    def decode(self, latents: Tensor) -> Tensor:
        """``(B, C_lat, h, w)`` (unscaled) -> images ``(B, 3, h*f, w*f)``."""
        if self.post_quant_conv is not None:
            latents = self.post_quant_conv(latents)
        return self.decoder(latents)

    def scale(self, latents: Tensor) -> Tensor:
        """Codec latents -> the diffusion model's latents."""
        return latents * self.cfg.scaling_factor

    def unscale(self, latents: Tensor) -> Tensor:
        """The diffusion model's latents -> codec latents."""
        return latents / self.cfg.scaling_factor

"""The latent-diffusion U-Net denoiser (the subset of diffusers' ``UNet2DConditionModel``
that Stable Diffusion 1.x/2.x uses).

``forward(sample: (B, C_lat, h, w), timesteps: (B,) or scalar, context: (B, L, Dc))`` ->
predicted noise (or v) ``(B, C_out, h, w)``. Down blocks halve ``h, w`` (all but the last),
up blocks double them back, reading the down path's skip connections in reverse; a block
``with_attention`` runs a :class:`SpatialTransformer` (self-attention over the latent
positions, then cross-attention from them to the text tokens) after each ResNet block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mmcore.kernels import KernelSet, select_kernels
from mmcore_diffusion.unet_blocks import (
    Downsample2D,
    ResnetBlock2D,
    SpatialTransformer,
    TimestepMLP,
    Upsample2D,
    timestep_embedding,
)


@dataclass(frozen=True)
class UNetConfig:
    """The U-Net's shape. ``down_attention[i]`` says whether down block ``i`` has
    transformers (CrossAttnDownBlock2D) or not (DownBlock2D); up blocks mirror it
    (``up_attention``, in the up path's order). ``heads`` is per level."""

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    down_attention: tuple[bool, ...] = (True, True, True, False)
    up_attention: tuple[bool, ...] = (False, True, True, True)
    layers_per_block: int = 2
    heads: tuple[int, ...] = (8, 8, 8, 8)
    cross_attention_dim: int = 768
    transformer_depth: int = 1
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: float = 0.0
    linear_projection: bool = False

    @property
    def time_dim(self) -> int:
        return self.block_out_channels[0] * 4


def _attention(cfg: UNetConfig, channels: int, heads: int, kernels: KernelSet) -> nn.Module:
    return SpatialTransformer(channels=channels, heads=heads, context_dim=cfg.cross_attention_dim,
                              groups=cfg.norm_num_groups, depth=cfg.transformer_depth,
                              linear_projection=cfg.linear_projection, kernels=kernels)


def _resnet(cfg: UNetConfig, cin: int, cout: int) -> ResnetBlock2D:
    return ResnetBlock2D(in_channels=cin, out_channels=cout, groups=cfg.norm_num_groups,
                         eps=cfg.norm_eps, temb_channels=cfg.time_dim)


class DownBlock(nn.Module):
    """``layers`` ResNet blocks (each optionally followed by a transformer), then an optional
    stride-2 downsample. Returns the output and every intermediate map (the skips)."""

    def __init__(self, cfg: UNetConfig, *, level: int, cin: int, kernels: KernelSet) -> None:
        super().__init__()
        cout = cfg.block_out_channels[level]
        self.resnets = nn.ModuleList(_resnet(cfg, cin if i == 0 else cout, cout)
                                     for i in range(cfg.layers_per_block))
        self.attentions = nn.ModuleList(
            _attention(cfg, cout, cfg.heads[level], kernels)
            for _ in range(cfg.layers_per_block) if cfg.down_attention[level])
        last = level == len(cfg.block_out_channels) - 1
        self.downsamplers = nn.ModuleList(
            [] if last else [Downsample2D(channels=cout, padding=1)])

    def forward(self, x: Tensor, temb: Tensor, context: Tensor) -> tuple[Tensor, list[Tensor]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if len(self.attentions):
                x = self.attentions[i](x, context)
            skips.append(x)
        for down in self.downsamplers:
            x = down(x)
            skips.append(x)
        return x, skips


class UpBlock(nn.Module):
    """``layers + 1`` ResNet blocks over ``cat(x, skip)`` (optionally each followed by a
    transformer), then an optional nearest x2 upsample."""

    def __init__(self, cfg: UNetConfig, *, index: int, kernels: KernelSet) -> None:
        super().__init__()
        rev = list(reversed(cfg.block_out_channels))
        cout, prev = rev[index], rev[max(index - 1, 0)]
        skip_in = rev[min(index + 1, len(rev) - 1)]
        n = cfg.layers_per_block + 1
        self.resnets = nn.ModuleList(
            _resnet(cfg, (prev if i == 0 else cout) + (skip_in if i == n - 1 else cout), cout)
            for i in range(n))
        level = len(rev) - 1 - index
        self.attentions = nn.ModuleList(
            _attention(cfg, cout, cfg.heads[level], kernels)
            for _ in range(n) if cfg.up_attention[index])
        self.upsamplers = nn.ModuleList(
            [] if index == len(rev) - 1 else [Upsample2D(channels=cout)])

    def forward(self, x: Tensor, skips: list[Tensor], temb: Tensor, context: Tensor) -> Tensor:
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), temb)  # (B, C_x + C_skip, h, w)
            if len(self.attentions):
                x = self.attentions[i](x, context)
        for up in self.upsamplers:
            x = up(x)
        return x


class MidBlock(nn.Module):
    """ResNet, transformer, ResNet at the lowest resolution."""

    def __init__(self, cfg: UNetConfig, *, kernels: KernelSet) -> None:
        super().__init__()
        c = cfg.block_out_channels[-1]
        self.resnets = nn.ModuleList([_resnet(cfg, c, c), _resnet(cfg, c, c)])
        self.attentions = nn.ModuleList([_attention(cfg, c, cfg.heads[-1], kernels)])

    def forward(self, x: Tensor, temb: Tensor, context: Tensor) -> Tensor:
        x = self.resnets[0](x, temb)
        return self.resnets[1](self.attentions[0](x, context), temb)


class UNet2DCondition(nn.Module):
    """The text-conditioned U-Net denoiser: ``(B, C, h, w)``, ``(B,)`` timesteps and text
    ``(B, L, Dc)`` -> ``(B, C_out, h, w)``."""

    def __init__(self, cfg: UNetConfig, *, kernels: KernelSet | None = None) -> None:
        super().__init__()
        kernels = kernels if kernels is not None else select_kernels()
        self.cfg, self.kernels = cfg, kernels
        channels = cfg.block_out_channels
        self.conv_in = nn.Conv2d(cfg.in_channels, channels[0], 3, padding=1)
        self.time_embedding = TimestepMLP(in_dim=channels[0], dim=cfg.time_dim)
        self.down_blocks = nn.ModuleList(
            DownBlock(cfg, level=i, cin=channels[max(i - 1, 0)], kernels=kernels)
            for i in range(len(channels)))
        self.mid_block = MidBlock(cfg, kernels=kernels)
        self.up_blocks = nn.ModuleList(UpBlock(cfg, index=i, kernels=kernels)
                                       for i in range(len(channels)))
        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, channels[0], eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(channels[0], cfg.out_channels, 3, padding=1)

    def check_size(self, height: int, width: int) -> None:
        """ValueError unless the down path's halvings divide the latent size."""
        factor = 2 ** (len(self.cfg.block_out_channels) - 1)
        if height % factor or width % factor:
            raise ValueError(f"latent size {height}x{width} is not divisible by {factor}, the "
                             "U-Net's downsampling factor")

    def time_embed(self, timesteps: Tensor | float, batch: int, device: torch.device) -> Tensor:
        """Timesteps (scalar or ``(B,)``) -> the embedding ``(B, T)``."""
        t = torch.as_tensor(timesteps, device=device).reshape(-1).expand(batch)
        emb = timestep_embedding(t, self.cfg.block_out_channels[0],
                                 flip_sin_to_cos=self.cfg.flip_sin_to_cos,
                                 freq_shift=self.cfg.freq_shift)
        return self.time_embedding(emb.to(self.conv_in.weight.dtype))

    def forward(self, sample: Tensor, timesteps: Tensor | float, context: Tensor) -> Tensor:
        self.check_size(sample.shape[-2], sample.shape[-1])
        temb = self.time_embed(timesteps, sample.shape[0], sample.device)  # (B, T)
        x = self.conv_in(sample)
        skips = [x]
        for down in self.down_blocks:
            x, block_skips = down(x, temb, context)
            skips.extend(block_skips)
        x = self.mid_block(x, temb, context)
        for up in self.up_blocks:
            x = up(x, skips, temb, context)
        return self.conv_out(torch.nn.functional.silu(self.conv_norm_out(x)))

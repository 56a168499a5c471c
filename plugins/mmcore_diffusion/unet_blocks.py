"""Building blocks of the latent-diffusion U-Net and the KL autoencoder.

Module and parameter names follow diffusers' layout where the two agree (``resnets``,
``attentions``, ``downsamplers``, ``time_emb_proj``), so the diffusers import is a short
:class:`mmcore.convert.hf.KeyMap`. Feature maps are ``(B, C, H, W)``; token sequences are
``(B, N, D)``; a timestep embedding is ``(B, T)``. Attention goes through mmcore's kernel
registry (:class:`mmcore.kernels.KernelSet`): self-attention through ``attention``,
latent-to-text cross-attention through ``cross_attention``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcore.kernels import KernelSet


def timestep_embedding(timesteps: Tensor, dim: int, *, flip_sin_to_cos: bool,
                       freq_shift: float, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of ``timesteps: (B,)`` -> ``(B, dim)`` (float32), as DDPM's
    U-Net: frequencies ``exp(-log(max_period) * i / (dim/2 - freq_shift))``."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                    device=timesteps.device)
    freqs = torch.exp(exponent / (half - freq_shift))
    angles = timesteps[:, None].float() * freqs[None, :]  # (B, dim/2)
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepMLP(nn.Module):
    """The time embedding MLP: ``(B, C) -> linear -> SiLU -> linear -> (B, T)``."""

    def __init__(self, *, in_dim: int, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))  # (B, T)


class ResnetBlock2D(nn.Module):
    """GroupNorm-SiLU-conv twice with a residual; the time embedding ``(B, T)`` (when the
    block has one) is projected and added per channel after the first conv."""

    def __init__(self, *, in_channels: int, out_channels: int, groups: int, eps: float,
                 temb_channels: int | None) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = (nn.Linear(temb_channels, out_channels)
                              if temb_channels is not None else None)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = (nn.Conv2d(in_channels, out_channels, 1)
                              if in_channels != out_channels else None)

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        if self.time_emb_proj is not None and temb is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class Downsample2D(nn.Module):
    """Stride-2 3x3 conv. ``padding=0`` pads right/bottom by one first (the VAE's way)."""

    def __init__(self, *, channels: int, padding: int) -> None:
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)  # (B, C, H/2, W/2)


class Upsample2D(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv: ``(B, C, H, W) -> (B, C, 2H, 2W)``."""

    def __init__(self, *, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Attention(nn.Module):
    """Multi-head attention over token sequences through the kernel registry.

    Queries ``(B, Nq, D)``; keys/values from ``context: (B, Nk, Dc)`` (cross) or the
    queries themselves (self). ``qkv_bias`` is False in the U-Net, True in the VAE.
    """

    def __init__(self, *, dim: int, heads: int, head_dim: int, kernels: KernelSet,
                 context_dim: int | None = None, qkv_bias: bool = False) -> None:
        super().__init__()
        inner, context_dim = heads * head_dim, context_dim or dim
        self.heads, self.head_dim, self.kernels = heads, head_dim, kernels
        self.to_q = nn.Linear(dim, inner, bias=qkv_bias)
        self.to_k = nn.Linear(context_dim, inner, bias=qkv_bias)
        self.to_v = nn.Linear(context_dim, inner, bias=qkv_bias)
        self.to_out = nn.Linear(inner, dim)

    def _split(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)  # (B, H, N, Dh)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        source = x if context is None else context
        q, k, v = self._split(self.to_q(x)), self._split(self.to_k(source)), \
            self._split(self.to_v(source))
        run = self.kernels.attention if context is None else self.kernels.cross_attention
        out = run(q, k, v)  # (B, H, Nq, Dh)
        b, _, nq, _ = out.shape
        return self.to_out(out.transpose(1, 2).reshape(b, nq, -1))  # (B, Nq, D)


class GEGLUFeedForward(nn.Module):
    """``x -> (a * gelu(g)) -> linear`` with ``[a, g] = proj(x)``: (B, N, D) -> (B, N, D)."""

    def __init__(self, *, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim * mult * 2)
        self.out = nn.Linear(dim * mult, dim)

    def forward(self, x: Tensor) -> Tensor:
        hidden, gate = self.proj(x).chunk(2, dim=-1)
        return self.out(hidden * F.gelu(gate))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm self-attention, cross-attention to the text, GEGLU MLP, each residual.
    ``x: (B, HW, D)``, ``context: (B, L, Dc)`` -> ``(B, HW, D)``."""

    def __init__(self, *, dim: int, heads: int, context_dim: int, kernels: KernelSet) -> None:
        super().__init__()
        head_dim = dim // heads
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim=dim, heads=heads, head_dim=head_dim, kernels=kernels)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim=dim, heads=heads, head_dim=head_dim, kernels=kernels,
                               context_dim=context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = GEGLUFeedForward(dim=dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """A feature map as tokens through transformer blocks, with a residual:
    ``(B, C, H, W)`` and text ``(B, L, Dc)`` -> ``(B, C, H, W)``. ``linear_projection``
    picks linear (SD 2) or 1x1-conv (SD 1) ``proj_in``/``proj_out``."""

    def __init__(self, *, channels: int, heads: int, context_dim: int, groups: int,
                 depth: int, linear_projection: bool, kernels: KernelSet) -> None:
        super().__init__()
        self.linear_projection = linear_projection
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in: nn.Module = (nn.Linear(channels, channels) if linear_projection
                                   else nn.Conv2d(channels, channels, 1))
        self.blocks = nn.ModuleList(
            TransformerBlock(dim=channels, heads=heads, context_dim=context_dim, kernels=kernels)
            for _ in range(depth))
        self.proj_out: nn.Module = (nn.Linear(channels, channels) if linear_projection
                                    else nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        b, c, h, w = x.shape
        hidden = self.norm(x)
        if not self.linear_projection:
            hidden = self.proj_in(hidden)
        tokens = hidden.permute(0, 2, 3, 1).reshape(b, h * w, c)  # (B, HW, C)
        if self.linear_projection:
            tokens = self.proj_in(tokens)
        for block in self.blocks:
            tokens = block(tokens, context)
        if self.linear_projection:
            tokens = self.proj_out(tokens)
        hidden = tokens.reshape(b, h, w, c).permute(0, 3, 1, 2)  # (B, C, H, W)
        if not self.linear_projection:
            hidden = self.proj_out(hidden)
        return hidden + x

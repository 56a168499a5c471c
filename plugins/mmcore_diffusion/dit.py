"""A DiT-style transformer denoiser (Peebles & Xie): patches of the latent as tokens,
adaLN-Zero conditioning on the timestep, and cross-attention to the text (as PixArt-alpha).

``forward(latents: (B, C, h, w), timesteps, context: (B, L, Dc))`` -> ``(B, C, h, w)``.
Positions are fixed 2-D sine-cosine embeddings computed for the input's grid, so any
latent size the patch divides runs. Attention goes through the kernel registry.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcore.kernels import KernelSet
from mmcore_diffusion.unet_blocks import Attention, TimestepMLP, timestep_embedding


@dataclass(frozen=True)
class DiTShape:
    channels: int  # latent channels in and out
    context_dim: int  # text width
    patch_size: int = 2
    width: int = 256
    layers: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0

    @property
    def hidden(self) -> int:
        return int(self.width * self.mlp_ratio)


def sincos_2d(h: int, w: int, dim: int, device: torch.device) -> Tensor:
    """Fixed 2-D positions ``(h*w, dim)``: half the channels for rows, half for columns."""
    quarter = dim // 4
    freqs = 1.0 / 10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
    rows = torch.arange(h, device=device, dtype=torch.float32)[:, None] * freqs  # (h, q)
    cols = torch.arange(w, device=device, dtype=torch.float32)[:, None] * freqs  # (w, q)
    r = torch.cat([rows.sin(), rows.cos()], -1)[:, None, :].expand(h, w, 2 * quarter)
    c = torch.cat([cols.sin(), cols.cos()], -1)[None, :, :].expand(h, w, 2 * quarter)
    pos = torch.cat([r, c], -1).reshape(h * w, 4 * quarter)
    return F.pad(pos, (0, dim - 4 * quarter))


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """adaLN-Zero self-attention, cross-attention to the text, MLP: ``(B, N, D)``."""

    def __init__(self, s: DiTShape, kernels: KernelSet) -> None:
        super().__init__()
        head_dim = s.width // s.heads
        self.norm1 = nn.LayerNorm(s.width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim=s.width, heads=s.heads, head_dim=head_dim, kernels=kernels,
                              qkv_bias=True)
        self.norm2 = nn.LayerNorm(s.width, eps=1e-6)
        self.cross = Attention(dim=s.width, heads=s.heads, head_dim=head_dim, kernels=kernels,
                               context_dim=s.context_dim, qkv_bias=True)
        self.norm3 = nn.LayerNorm(s.width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(s.width, s.hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(s.hidden, s.width))
        self.modulation = nn.Linear(s.width, 6 * s.width)  # adaLN: zero-initialised gates
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: Tensor, temb: Tensor, context: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(F.silu(temb)).chunk(6, -1)
        x = x + gate1[:, None] * self.attn(_modulate(self.norm1(x), shift1, scale1))
        x = x + self.cross(self.norm2(x), context)
        return x + gate2[:, None] * self.mlp(_modulate(self.norm3(x), shift2, scale2))


class DiT(nn.Module):
    """Patchify -> blocks -> adaLN final layer -> unpatchify."""

    def __init__(self, shape: DiTShape, *, kernels: KernelSet) -> None:
        super().__init__()
        s = self.shape = shape
        self.patch = nn.Conv2d(s.channels, s.width, s.patch_size, stride=s.patch_size)
        self.time_embedding = TimestepMLP(in_dim=s.width, dim=s.width)
        self.blocks = nn.ModuleList(DiTBlock(s, kernels) for _ in range(s.layers))
        self.norm_out = nn.LayerNorm(s.width, elementwise_affine=False, eps=1e-6)
        self.modulation_out = nn.Linear(s.width, 2 * s.width)
        self.proj_out = nn.Linear(s.width, s.patch_size**2 * s.channels)

    def check_size(self, height: int, width: int) -> None:
        p = self.shape.patch_size
        if height % p or width % p:
            raise ValueError(f"latent size {height}x{width} is not divisible by the DiT's "
                             f"patch size {p}")

    def forward(self, latents: Tensor, timesteps: Tensor | float, context: Tensor) -> Tensor:
        b, c, h, w = latents.shape
        self.check_size(h, w)
        p = self.shape.patch_size
        x = self.patch(latents)  # (B, D, h/p, w/p)
        gh, gw = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2) + sincos_2d(gh, gw, self.shape.width, x.device)
        t = torch.as_tensor(timesteps, device=x.device).reshape(-1).expand(b)
        temb = self.time_embedding(timestep_embedding(
            t, self.shape.width, flip_sin_to_cos=True, freq_shift=0.0).to(x.dtype))
        for block in self.blocks:
            x = block(x, temb, context)
        shift, scale = self.modulation_out(F.silu(temb)).chunk(2, -1)
        x = self.proj_out(_modulate(self.norm_out(x), shift, scale))  # (B, N, p*p*C)
        x = x.reshape(b, gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, c, gh * p, gw * p)

"""Analytic parameter counts of the U-Net and the KL autoencoder from their configs, without
building anything (for ``inspect`` and the parameter ceiling checked before allocating).
Each function mirrors one module's constructor."""

from __future__ import annotations

from mmcore_diffusion.unet import UNetConfig
from mmcore_diffusion.vae import VAEConfig


def conv(cin: int, cout: int, k: int = 3) -> int:
    return cin * cout * k * k + cout


def linear(cin: int, cout: int, bias: bool = True) -> int:
    return cin * cout + (cout if bias else 0)


def resnet(cin: int, cout: int, temb: int | None) -> int:
    """:class:`~mmcore_diffusion.unet_blocks.ResnetBlock2D`."""
    time = linear(temb, cout) if temb is not None else 0
    skip = conv(cin, cout, 1) if cin != cout else 0
    return 2 * cin + conv(cin, cout) + time + 2 * cout + conv(cout, cout) + skip


def transformer_block(dim: int, context: int) -> int:
    """:class:`~mmcore_diffusion.unet_blocks.TransformerBlock` (GEGLU x4)."""
    self_attn = 3 * linear(dim, dim, False) + linear(dim, dim)
    cross_attn = linear(dim, dim, False) + 2 * linear(context, dim, False) + linear(dim, dim)
    return 3 * 2 * dim + self_attn + cross_attn + linear(dim, 8 * dim) + linear(4 * dim, dim)


def spatial_transformer(cfg: UNetConfig, channels: int) -> int:
    proj = linear(channels, channels)  # a 1x1 conv has as many
    blocks = cfg.transformer_depth * transformer_block(channels, cfg.cross_attention_dim)
    return 2 * channels + 2 * proj + blocks


def unet_parameters(cfg: UNetConfig) -> int:
    """Parameters of :class:`~mmcore_diffusion.unet.UNet2DCondition` for ``cfg``."""
    ch, t, n = cfg.block_out_channels, cfg.time_dim, cfg.layers_per_block
    total = conv(cfg.in_channels, ch[0]) + linear(ch[0], t) + linear(t, t)
    for i, cout in enumerate(ch):
        cin = ch[max(i - 1, 0)]
        total += sum(resnet(cin if j == 0 else cout, cout, t) for j in range(n))
        total += n * spatial_transformer(cfg, cout) if cfg.down_attention[i] else 0
        total += conv(cout, cout) if i < len(ch) - 1 else 0
    total += 2 * resnet(ch[-1], ch[-1], t) + spatial_transformer(cfg, ch[-1])
    rev = list(reversed(ch))
    for i, cout in enumerate(rev):
        prev, skip = rev[max(i - 1, 0)], rev[min(i + 1, len(rev) - 1)]
        total += sum(resnet((prev if j == 0 else cout) + (skip if j == n else cout), cout, t)
                     for j in range(n + 1))
        total += (n + 1) * spatial_transformer(cfg, cout) if cfg.up_attention[i] else 0
        total += conv(cout, cout) if i < len(rev) - 1 else 0
    return total + 2 * ch[0] + conv(ch[0], cfg.out_channels)


def _vae_mid(cfg: VAEConfig) -> int:
    c = cfg.block_out_channels[-1]
    attention = 2 * c + 4 * linear(c, c) if cfg.mid_block_attention else 0
    return 2 * resnet(c, c, None) + attention


def vae_parameters(cfg: VAEConfig) -> int:
    """Parameters of :class:`~mmcore_diffusion.vae.AutoencoderKL` for ``cfg``."""
    ch, lat, n = cfg.block_out_channels, cfg.latent_channels, cfg.layers_per_block
    encoder = conv(cfg.in_channels, ch[0]) + _vae_mid(cfg) + 2 * ch[-1] + conv(ch[-1], 2 * lat)
    for i, cout in enumerate(ch):
        encoder += sum(resnet(ch[max(i - 1, 0)] if j == 0 else cout, cout, None)
                       for j in range(n))
        encoder += conv(cout, cout) if i < len(ch) - 1 else 0
    rev = list(reversed(ch))
    decoder = conv(lat, rev[0]) + _vae_mid(cfg) + 2 * rev[-1] + conv(rev[-1], cfg.out_channels)
    for i, cout in enumerate(rev):
        decoder += sum(resnet(rev[max(i - 1, 0)] if j == 0 else cout, cout, None)
                       for j in range(n + 1))
        decoder += conv(cout, cout) if i < len(rev) - 1 else 0
    quant = (conv(2 * lat, 2 * lat, 1) if cfg.use_quant_conv else 0) + \
        (conv(lat, lat, 1) if cfg.use_post_quant_conv else 0)
    return encoder + decoder + quant

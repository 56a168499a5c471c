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


# -- FLOPs of one denoising step (2 per multiply-add; matrix products, convolutions and
# attention scores only, as torch.utils.flop_counter counts) --------------------------


def _conv_flops(cin: int, cout: int, pixels: int, k: int = 3) -> int:
    return 2 * cin * cout * k * k * pixels


def _resnet_flops(cin: int, cout: int, pixels: int, temb: int) -> int:
    skip = _conv_flops(cin, cout, pixels, 1) if cin != cout else 0
    return _conv_flops(cin, cout, pixels) + _conv_flops(cout, cout, pixels) + 2 * temb * cout \
        + skip


def _transformer_flops(cfg: UNetConfig, dim: int, tokens: int, context: int) -> int:
    """One SpatialTransformer over ``tokens`` positions and ``context`` text tokens."""
    c = cfg.cross_attention_dim
    self_attn = 2 * tokens * dim * dim * 4 + 2 * 2 * tokens * tokens * dim
    cross = 2 * tokens * dim * dim * 2 + 2 * context * c * dim * 2 + 2 * 2 * tokens * context * dim
    ff = 2 * tokens * dim * 8 * dim + 2 * tokens * 4 * dim * dim
    return 2 * 2 * tokens * dim * dim + cfg.transformer_depth * (self_attn + cross + ff)


def unet_flops(cfg: UNetConfig, height: int, width: int, context: int) -> int:
    """Forward FLOPs of one U-Net call on one ``height x width`` latent with ``context``
    text tokens (classifier-free guidance doubles it)."""
    ch, t, n = cfg.block_out_channels, cfg.time_dim, cfg.layers_per_block
    px = height * width
    total = _conv_flops(cfg.in_channels, ch[0], px) + 2 * ch[0] * t + 2 * t * t
    for i, cout in enumerate(ch):
        p = px >> (2 * i)
        for j in range(n):
            total += _resnet_flops(ch[max(i - 1, 0)] if j == 0 else cout, cout, p, t)
            total += _transformer_flops(cfg, cout, p, context) if cfg.down_attention[i] else 0
        total += _conv_flops(cout, cout, p >> 2) if i < len(ch) - 1 else 0
    p_mid = px >> (2 * (len(ch) - 1))
    total += 2 * _resnet_flops(ch[-1], ch[-1], p_mid, t) + \
        _transformer_flops(cfg, ch[-1], p_mid, context)
    rev = list(reversed(ch))
    for i, cout in enumerate(rev):
        p = px >> (2 * (len(rev) - 1 - i))
        prev, skip = rev[max(i - 1, 0)], rev[min(i + 1, len(rev) - 1)]
        for j in range(n + 1):
            cin = (prev if j == 0 else cout) + (skip if j == n else cout)
            total += _resnet_flops(cin, cout, p, t)
            total += _transformer_flops(cfg, cout, p, context) if cfg.up_attention[i] else 0
        total += _conv_flops(cout, cout, p << 2) if i < len(rev) - 1 else 0
    return total + _conv_flops(ch[0], cfg.out_channels, px)


def sampling_memory(weights: int, cfg: UNetConfig, side: int, batch: int,
                    dtype_bytes: int = 4) -> int:
    """Bytes to sample ``batch`` images with guidance (the U-Net runs on ``2 * batch``):
    every weight, plus the U-Net's largest live tensors at the top level - the skip maps
    kept for the up path and one self-attention score matrix per head (unfused attention;
    a flash kernel needs none)."""
    b, px, c0 = 2 * batch, side * side, cfg.block_out_channels[0]
    skips = sum((cfg.layers_per_block + 1) * c * (px >> (2 * i))
                for i, c in enumerate(cfg.block_out_channels))
    scores = cfg.heads[0] * px * px if cfg.down_attention[0] else 0
    work = 4 * c0 * px  # a resnet's input, hidden and output maps at the top level
    return weights * dtype_bytes + b * (skips + scores + work) * dtype_bytes


def _vae_mid_flops(cfg: VAEConfig, pixels: int) -> int:
    c = cfg.block_out_channels[-1]
    attention = 2 * pixels * c * c * 4 + 2 * 2 * pixels * pixels * c \
        if cfg.mid_block_attention else 0
    return 2 * _resnet_flops(c, c, pixels, 0) + attention


def vae_flops(cfg: VAEConfig, side: int, *, decode: bool) -> int:
    """Forward FLOPs of encoding one ``side``-square image (and decoding it back)."""
    ch, lat, n = cfg.block_out_channels, cfg.latent_channels, cfg.layers_per_block
    px, low = side * side, (side // cfg.downsampling) ** 2
    enc = _conv_flops(cfg.in_channels, ch[0], px) + _vae_mid_flops(cfg, low) \
        + _conv_flops(ch[-1], 2 * lat, low)
    enc += _conv_flops(2 * lat, 2 * lat, low, 1) if cfg.use_quant_conv else 0
    for i, cout in enumerate(ch):
        p = px >> (2 * i)
        enc += sum(_resnet_flops(ch[max(i - 1, 0)] if j == 0 else cout, cout, p, 0)
                   for j in range(n))
        enc += _conv_flops(cout, cout, p >> 2) if i < len(ch) - 1 else 0
    if not decode:
        return enc
    rev = list(reversed(ch))
    dec = _conv_flops(lat, rev[0], low) + _vae_mid_flops(cfg, low) \
        + _conv_flops(rev[-1], cfg.out_channels, px)
    dec += _conv_flops(lat, lat, low, 1) if cfg.use_post_quant_conv else 0
    for i, cout in enumerate(rev):
        p = low << (2 * i)
        dec += sum(_resnet_flops(rev[max(i - 1, 0)] if j == 0 else cout, cout, p, 0)
                   for j in range(n + 1))
        dec += _conv_flops(cout, cout, p << 2) if i < len(rev) - 1 else 0
    return enc + dec

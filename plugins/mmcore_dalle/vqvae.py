"""The ``vq-vae`` codec: a convolutional encoder, a :class:`VectorQuantizer`, a
convolutional decoder. Images (B, 3, H, W) in [-1, 1] <-> a grid of code ids
(B, H/f, W/f), f = 2 ** (levels - 1).

It has the codec interface the ``latent`` tokenizer uses (``encode`` returns a
posterior-like :class:`Quantized`, ``decode``, ``scale``/``unscale``, ``downsampling``,
``latent_channels``), so it trains with the ``passthrough`` fusion and the
``reconstruction`` objective, which adds :meth:`VQVAE.auxiliary_terms` (commitment and
codebook loss; usage and perplexity logged). :meth:`encode_codes` / :meth:`decode_codes`
are the discrete interface the DALL-E prior uses.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.registry import ComponentConfig
from mmcore_dalle.quantizer import Quantized, VectorQuantizer


class VQVAEConfig(ComponentConfig):
    in_channels: int = Field(3, gt=0)
    #: channels per resolution level; each level after the first halves the side
    channels: tuple[int, ...] = (32, 64, 64)
    #: residual blocks at the lowest resolution (encoder end, decoder start)
    res_blocks: int = Field(1, ge=0)
    norm_groups: int = Field(8, gt=0)
    #: width of a code vector
    latent_channels: int = Field(32, gt=0)
    codebook_size: int = Field(128, gt=1)
    #: weight of the commitment loss |z - sg(q)|^2
    beta: float = Field(0.25, ge=0)
    #: how the codebook learns: its own loss (``gradient``) or moving averages (``ema``)
    update: Literal["gradient", "ema"] = "ema"
    decay: float = Field(0.99, gt=0, lt=1)
    #: re-initialise codes unused for this many training steps (0: never)
    restart_after: int = Field(20, ge=0)

    @field_validator("channels")
    @classmethod
    def _levels(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(c <= 0 for c in value):
            raise ValueError("channels must be one or more positive ints")
        return value


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, plus the input. (B, C, H, W) -> (B, C, H, W)"""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(groups, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(groups, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class Encoder(nn.Module):
    """(B, 3, H, W) -> (B, latent_channels, H/f, W/f): a conv per level (stride 2 after the
    first), SiLU between, residual blocks at the lowest resolution."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        ch, g = cfg.channels, cfg.norm_groups
        layers: list[nn.Module] = [nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)]
        for i in range(1, len(ch)):
            layers += [nn.SiLU(), nn.Conv2d(ch[i - 1], ch[i], 4, stride=2, padding=1)]
        layers += [ResBlock(ch[-1], g) for _ in range(cfg.res_blocks)]
        layers += [nn.GroupNorm(g, ch[-1]), nn.SiLU(), nn.Conv2d(ch[-1], cfg.latent_channels, 1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        return self.layers(images)


class Decoder(nn.Module):
    """(B, latent_channels, h, w) -> (B, 3, h*f, w*f): the encoder mirrored (transposed
    convs up)."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        ch, g = tuple(reversed(cfg.channels)), cfg.norm_groups
        layers: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, ch[0], 3, padding=1)]
        layers += [ResBlock(ch[0], g) for _ in range(cfg.res_blocks)]
        for i in range(1, len(ch)):
            layers += [nn.SiLU(), nn.ConvTranspose2d(ch[i - 1], ch[i], 4, stride=2, padding=1)]
        layers += [nn.SiLU(), nn.Conv2d(ch[-1], cfg.in_channels, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, latents: Tensor) -> Tensor:
        return self.layers(latents)


class VQVAE(nn.Module):
    """Encoder -> vector quantizer -> decoder (see the module docstring)."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)
        self.quantizer = VectorQuantizer(size=cfg.codebook_size, dim=cfg.latent_channels,
                                         beta=cfg.beta, update=cfg.update, decay=cfg.decay,
                                         restart_after=cfg.restart_after)
        self.latent_channels = cfg.latent_channels
        self.codebook_size = cfg.codebook_size

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.cfg.channels) - 1)

    def encode(self, images: Tensor) -> Quantized:
        """Images (B, 3, H, W) in [-1, 1] -> :class:`Quantized` (EMA and restarts in
        training mode)."""
        return self.quantizer(self.encoder(images))

    def decode(self, latents: Tensor) -> Tensor:
        """Quantised latents (B, C, h, w) -> images (B, 3, h*f, w*f) (about [-1, 1])."""
        return self.decoder(latents)

    def scale(self, latents: Tensor) -> Tensor:
        return latents

    def unscale(self, latents: Tensor) -> Tensor:
        return latents

    def auxiliary_terms(self, posterior: Quantized) -> dict[str, Tensor]:
        """What the ``reconstruction`` objective adds: ``loss`` (commitment + codebook) and
        the logged ``usage`` and ``perplexity``."""
        return {"loss": posterior.loss, "vq_loss": posterior.loss.detach(),
                "usage": posterior.usage, "perplexity": posterior.perplexity}

    @torch.no_grad()
    def encode_codes(self, images: Tensor) -> Tensor:
        """Images (B, 3, H, W) -> code ids (B, H/f, W/f); never updates the codebook."""
        return self.quantizer.codes_of(self.encoder(images))

    @torch.no_grad()
    def decode_codes(self, codes: Tensor) -> Tensor:
        """Code ids (B, h, w) -> images (B, 3, h*f, w*f)."""
        return self.decoder(self.quantizer.lookup(codes))


def build_vq_vae(cfg: VQVAEConfig, ctx: BuildContext) -> VQVAE:
    bad = [c for c in cfg.channels if c % cfg.norm_groups]
    if bad:
        raise ValueError(f"channels {bad} are not divisible by norm_groups {cfg.norm_groups}")
    return VQVAE(cfg)

"""Image codecs as components: the ``kl-autoencoder`` codec, the ``latent`` tokenizer that
turns images into codec latents for the model, and the ``passthrough`` fusion a codec-only
model (trained with the ``reconstruction`` objective) uses.

A codec is registered through ``register_codecs`` and built inside the ``latent``
tokenizer from its ``codec: {type: NAME, ...}`` params, so its weights sit at
``modalities.image.tokenizer`` in every model that uses it: a trained codec loads into a
diffusion model with ``init: {modalities.image.tokenizer: RUN}``. A codec module has
``encode(images) -> LatentDistribution`` (a VQ-VAE would return its quantised latents the
same way), ``decode``, ``scale``/``unscale``, ``downsampling`` and ``latent_channels``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from mmcore.builder import BuildContext, make_component
from mmcore.contract import Fusion, FusionOutput, ModalityInput, Tokenizer, Tokens
from mmcore.registry import ComponentConfig
from mmcore.spec import ComponentRef
from mmcore_diffusion.vae import AutoencoderKL, LatentDistribution, VAEConfig


class KLAutoencoderConfig(ComponentConfig):
    """:class:`~mmcore_diffusion.vae.VAEConfig` as component params (SD v1's by default)."""

    in_channels: int = Field(3, gt=0)
    out_channels: int = Field(3, gt=0)
    latent_channels: int = Field(4, gt=0)
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = Field(2, gt=0)
    norm_num_groups: int = Field(32, gt=0)
    scaling_factor: float = Field(0.18215, gt=0)
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_attention: bool = True

    @field_validator("block_out_channels")
    @classmethod
    def _levels(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(c <= 0 for c in value):
            raise ValueError("block_out_channels must be one or more positive ints")
        return value

    def vae_config(self) -> VAEConfig:
        return VAEConfig(**self.model_dump())


def build_kl_autoencoder(cfg: KLAutoencoderConfig, ctx: BuildContext) -> AutoencoderKL:
    bad = [c for c in cfg.block_out_channels if c % cfg.norm_num_groups]
    if bad:
        raise ValueError(f"block_out_channels {bad} are not divisible by norm_num_groups "
                         f"{cfg.norm_num_groups}")
    return AutoencoderKL(cfg.vae_config(), kernels=ctx.kernels)


@dataclass
class Latents(Tokens):
    """Codec latents as tokens: ``x: (B, h*w, C)`` (row-major positions, scaled for the
    diffusion model), with the ``codec`` that made them and, for training the codec, its
    ``posterior``. Objectives that decode (``reconstruction``) read ``codec``."""

    codec: Any = None
    posterior: LatentDistribution | None = None
    grid: tuple[int, int] = (0, 0)
    reconstruction: Tensor | None = None  # (B, 3, H, W), with ``reconstruct: true``


def latents_to_tokens(latents: Tensor) -> Tensor:
    """``(B, C, h, w)`` -> ``(B, h*w, C)``."""
    b, c, h, w = latents.shape
    return latents.permute(0, 2, 3, 1).reshape(b, h * w, c)


def tokens_to_latents(x: Tensor, height: int | None = None) -> Tensor:
    """``(B, N, C)`` -> ``(B, C, h, w)``; ``h`` given, or ``h = w = sqrt(N)`` (square)."""
    b, n, c = x.shape
    h = height if height is not None else math.isqrt(n)
    if h <= 0 or n % h or (height is None and h * h != n):
        raise ValueError(f"{n} latent tokens do not form a square grid; pass the height")
    return x.transpose(1, 2).reshape(b, c, h, n // h)


class LatentTokenizerConfig(ComponentConfig):
    #: the codec: ``{type: kl-autoencoder, ...its params}`` (``mmcore list codec``)
    codec: dict[str, Any] = Field(default_factory=lambda: {"type": "kl-autoencoder"})
    #: image side the analytic cost (``mmcore inspect``) is taken at; any divisible size runs
    image_size: int = Field(512, gt=0)
    #: also decode the latents (``Latents.reconstruction``): for training the codec
    reconstruct: bool = False

    @field_validator("codec")
    @classmethod
    def _typed(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(value.get("type"), str):
            raise ValueError("codec needs a 'type': a registered codec name "
                             "(mmcore list codec)")
        return value


class LatentTokenizer(Tokenizer):
    """Images ``(B, 3, H, W)`` in [-1, 1] -> :class:`Latents` ``(B, H/f * W/f, C_lat)``:
    a posterior sample while training, its mean in eval mode, times the scaling factor;
    with ``reconstruct``, also the decoded images."""

    def __init__(self, codec: Any, *, reconstruct: bool = False) -> None:
        super().__init__()
        self.codec, self.reconstruct = codec, reconstruct
        self.out_width = int(codec.latent_channels)

    def forward(self, inputs: ModalityInput) -> Tokens:
        if not isinstance(inputs, Tensor) or inputs.dim() != 4:
            raise ValueError("the latent tokenizer takes images (B, 3, H, W)")
        posterior = self.codec.encode(inputs)
        z = posterior.sample() if self.training else posterior.mean
        recon = self.codec.decode(z) if self.reconstruct else None
        z = self.codec.scale(z)  # (B, C, h, w)
        return Latents(latents_to_tokens(z), None, codec=self.codec, posterior=posterior,
                       grid=(int(z.shape[-2]), int(z.shape[-1])), reconstruction=recon)


def build_codec(spec: dict[str, Any], ctx: BuildContext) -> Any:
    """A codec from ``{type: NAME, ...params}`` through the registry's ``codec`` kind: an
    ``nn.Module`` with the codec interface (module docstring)."""
    from mmcore.plugins import get_registry

    codec = make_component(get_registry(), "codec", ComponentRef(**spec), ctx)
    assert isinstance(codec, nn.Module)
    return codec


def build_latent_tokenizer(cfg: LatentTokenizerConfig, ctx: BuildContext) -> LatentTokenizer:
    """The tokenizer around its codec; ValueError (naming both sizes) when the codec's
    downsampling does not divide ``image_size``."""
    codec = build_codec(cfg.codec, ctx)
    factor = int(codec.downsampling)
    if cfg.image_size % factor:
        raise ValueError(f"image_size {cfg.image_size} is not divisible by {factor}, the "
                         f"codec's downsampling factor (e.g. {cfg.image_size // factor * factor}"
                         f" or {(cfg.image_size // factor + 1) * factor})")
    return LatentTokenizer(codec, reconstruct=cfg.reconstruct)


def example_images(module: nn.Module, batch: int, generator: torch.Generator) -> Tensor:
    """Images whose side the tiny codec's downsampling divides: ``(B, 3, 4f, 4f)``."""
    assert isinstance(module, LatentTokenizer)
    side = 4 * int(module.codec.downsampling)
    return torch.rand(batch, 3, side, side, generator=generator) * 2 - 1


class Passthrough(Fusion):
    """No fusion: each modality's tokens go to the objectives unchanged (a codec-only
    model, whose objective reads the image tokens)."""

    #: no pooled embeddings (heads and objectives read the tokens)
    embedding_widths: ClassVar[dict[str, int]] = {}

    def forward(self, tokens: dict[str, Tokens]) -> FusionOutput:
        return FusionOutput(tokens=dict(tokens), embeddings={})


def build_passthrough(cfg: ComponentConfig, ctx: BuildContext) -> Passthrough:
    return Passthrough()

"""Denoisers as the model's fusion (its trunk): ``unet`` and the DiT-style ``dit`` fill
the same spec slot.

The fusion receives ``{image: noisy latent tokens (B, h*w, C), text: (B, L, D),
"diffusion_step": (B, 1, 2)}``: the ``diffusion`` objective's ``prepare`` hook noises the
image latents and adds the step entry (timestep, and 1.0 where the sample's text is
dropped for classifier-free guidance). It returns ``tokens[image]``: the predicted noise
(or v) ``(B, h*w, C)``. Samplers call :meth:`Denoiser.denoise` on ``(B, C, h, w)`` maps.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.contract import Fusion, FusionOutput, Tokens
from mmcore.registry import ComponentConfig
from mmcore_diffusion.codec import latents_to_tokens, tokens_to_latents
from mmcore_diffusion.convert import sampler_from_config
from mmcore_diffusion.dit import DiT, DiTShape
from mmcore_diffusion.samplers import Sampler
from mmcore_diffusion.unet import UNet2DCondition, UNetConfig

#: the entry the diffusion objective adds beside the modalities: (B, 1, 2) = [t, dropped]
STEP_KEY = "diffusion_step"
#: Stable Diffusion v1's scheduler_config.json (PNDM there; DDIM here by default)
SD_SCHEDULER: dict[str, Any] = {
    "_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "beta_end": 0.012, "num_train_timesteps": 1000, "clip_sample": False,
    "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon"}


def step_tokens(timesteps: Tensor, dropped: Tensor | None = None) -> Tokens:
    """The ``diffusion_step`` entry: ``(B,)`` timesteps and drop flags -> ``(B, 1, 2)``."""
    t = timesteps.float().reshape(-1)
    drop = torch.zeros_like(t) if dropped is None else dropped.to(t.dtype).reshape(-1)
    return Tokens(torch.stack([t, drop], dim=-1)[:, None, :])


class DenoiserConfig(ComponentConfig):
    """What every denoiser shares: its modality names, the null condition and sampling."""

    image: str = "image"
    text: str = "text"
    #: what "no text" is, for dropout in training and the unconditional branch of
    #: guidance: a zero context, or the encoded empty prompt (Stable Diffusion)
    null_condition: Literal["zeros", "empty-prompt"] = "zeros"
    #: a diffusers scheduler config (``_class_name`` picks DDPM, DDIM, Euler or DPM-Solver++)
    scheduler: dict[str, Any] = Field(default_factory=lambda: dict(SD_SCHEDULER))
    #: latent side the analytic cost is taken at (inspect); any divisible size runs
    sample_size: int = Field(64, gt=0)
    guidance: float = Field(7.5, ge=0)  # the default guidance scale of ``mmcore generate``


class Denoiser(Fusion):
    """The shared fusion wrapper: token plumbing, the null condition and the sampler."""

    #: no pooled embeddings (heads and objectives read the tokens)
    embedding_widths: ClassVar[dict[str, int]] = {}

    def __init__(self, cfg: DenoiserConfig, network: nn.Module) -> None:
        super().__init__()
        self.cfg, self.network = cfg, network
        sampler_from_config(cfg.scheduler, where="fusion.scheduler")  # fail at build time

    def sampler(self, cls: str | None = None) -> Sampler:
        """A fresh sampler for this model's schedule (``cls`` overrides its class)."""
        return sampler_from_config(self.cfg.scheduler, cls=cls, where="fusion.scheduler")

    def denoise(self, latents: Tensor, timesteps: Tensor | float, context: Tensor) -> Tensor:
        """``(B, C, h, w)`` noisy latents, timesteps, text ``(B, L, D)`` -> ``(B, C, h, w)``."""
        return self.network(latents, timesteps, context)

    def null_context(self, context: Tensor) -> Tensor:
        """The zero context shaped like ``context`` (``null_condition: zeros``)."""
        return torch.zeros_like(context)

    def forward(self, tokens: dict[str, Tokens]) -> FusionOutput:
        image, text = self._get(tokens, self.cfg.image), self._get(tokens, self.cfg.text)
        b = image.x.shape[0]
        step = tokens.get(STEP_KEY)
        t = step.x[:, 0, 0] if step is not None else torch.zeros(b, device=image.x.device)
        context = text.x
        if step is not None:
            dropped = step.x[:, 0, 1] > 0.5
            if bool(dropped.any()):
                if self.cfg.null_condition != "zeros":
                    raise ValueError("conditioning dropout with null_condition "
                                     "'empty-prompt' is not implemented; use 'zeros'")
                context = torch.where(dropped[:, None, None], self.null_context(context),
                                      context)
        out = self.denoise(tokens_to_latents(image.x), t, context)
        return FusionOutput(tokens={self.cfg.image: Tokens(latents_to_tokens(out))},
                            embeddings={})

    @staticmethod
    def _get(tokens: dict[str, Tokens], name: str) -> Tokens:
        if name not in tokens:
            raise ValueError(f"the denoiser needs modality {name!r}; it got {sorted(tokens)}")
        return tokens[name]


class UNetDenoiserConfig(DenoiserConfig):
    """:class:`~mmcore_diffusion.unet.UNetConfig` (SD v1's by default) plus the shared
    denoiser options; ``in_channels`` and ``cross_attention_dim`` must match the image and
    text widths."""

    in_channels: int = Field(4, gt=0)
    out_channels: int = Field(4, gt=0)
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    down_attention: tuple[bool, ...] = (True, True, True, False)
    up_attention: tuple[bool, ...] = (False, True, True, True)
    layers_per_block: int = Field(2, gt=0)
    heads: tuple[int, ...] = (8, 8, 8, 8)
    cross_attention_dim: int = Field(768, gt=0)
    transformer_depth: int = Field(1, gt=0)
    norm_num_groups: int = Field(32, gt=0)
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: float = 0.0
    linear_projection: bool = False

    def unet_config(self) -> UNetConfig:
        fields = set(UNetConfig.__dataclass_fields__)
        return UNetConfig(**{k: v for k, v in self.model_dump().items() if k in fields})


def _check_widths(cfg: DenoiserConfig, ctx: BuildContext, image: int, text: int) -> None:
    for name, want, what in ((cfg.image, image, "in_channels"),
                             (cfg.text, text, "the text width")):
        got = ctx.widths.get(name)
        if not ctx.widths or got is None:
            if ctx.widths:
                raise ValueError(f"no modality {name!r} for the denoiser; modalities are "
                                 f"{sorted(ctx.widths)}")
            continue
        if got != want:
            raise ValueError(f"modality {name!r} has width {got}, but the denoiser's {what} "
                             f"is {want}")


def build_unet(cfg: UNetDenoiserConfig, ctx: BuildContext) -> Denoiser:
    levels = len(cfg.block_out_channels)
    for key in ("down_attention", "up_attention", "heads"):
        if len(getattr(cfg, key)) != levels:
            raise ValueError(f"{key} needs one value per level ({levels}), got "
                             f"{len(getattr(cfg, key))}")
    bad = [c for c in cfg.block_out_channels if c % cfg.norm_num_groups]
    if bad:
        raise ValueError(f"block_out_channels {bad} are not divisible by norm_num_groups "
                         f"{cfg.norm_num_groups}")
    _check_widths(cfg, ctx, cfg.in_channels, cfg.cross_attention_dim)
    return Denoiser(cfg, UNet2DCondition(cfg.unet_config(), kernels=ctx.kernels))


class DiTDenoiserConfig(DenoiserConfig):
    """A DiT over latent patches; channels and text width come from the modalities."""

    patch_size: int = Field(2, gt=0)
    width: int = Field(256, gt=0)
    layers: int = Field(4, gt=0)
    heads: int = Field(4, gt=0)
    mlp_ratio: float = Field(4.0, gt=0)


def build_dit(cfg: DiTDenoiserConfig, ctx: BuildContext) -> Denoiser:
    if cfg.width % cfg.heads:
        raise ValueError(f"width {cfg.width} is not divisible by heads {cfg.heads}")
    channels, text = ctx.widths.get(cfg.image), ctx.widths.get(cfg.text)
    if channels is None or text is None:
        raise ValueError(f"the dit denoiser needs modalities {cfg.image!r} and {cfg.text!r}; "
                         f"it got {sorted(ctx.widths)}")
    shape = DiTShape(channels=channels, context_dim=text, patch_size=cfg.patch_size,
                     width=cfg.width, layers=cfg.layers, heads=cfg.heads,
                     mlp_ratio=cfg.mlp_ratio)
    return Denoiser(cfg, DiT(shape, kernels=ctx.kernels))


def example_denoiser_input(module: nn.Module, batch: int,
                           generator: torch.Generator) -> dict[str, Tokens]:
    """Noisy ``sample_size``-square latents, 7 text tokens (the harness's second
    modality's length), and timesteps."""
    assert isinstance(module, Denoiser)
    channels = (module.network.cfg.in_channels if isinstance(module.network, UNet2DCondition)
                else module.network.shape.channels)
    context = (module.network.cfg.cross_attention_dim
               if isinstance(module.network, UNet2DCondition)
               else module.network.shape.context_dim)
    side = module.cfg.sample_size
    image = torch.randn(batch, side * side, channels, generator=generator)
    text = torch.randn(batch, 7, context, generator=generator)
    t = torch.randint(0, 1000, (batch,), generator=generator)
    return {module.cfg.image: Tokens(image), module.cfg.text: Tokens(text),
            STEP_KEY: step_tokens(t)}

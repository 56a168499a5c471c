"""Text to image: text embeddings -> the sampling loop with classifier-free guidance over
the U-Net -> the VAE decoder.

``sample_latents(unet, sampler, latents: (B, C, h, w), cond: (B, L, D), ...)`` returns the
final latents; :func:`decode` turns them into images ``(B, 3, H, W)`` in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from mmcore_diffusion.guidance import guidance_batch, guided
from mmcore_diffusion.samplers import Sampler
from mmcore_diffusion.unet import UNet2DCondition
from mmcore_diffusion.vae import AutoencoderKL

Denoise = Callable[[Tensor, Tensor, Tensor], Tensor]


@torch.no_grad()
def sample_latents(unet: UNet2DCondition | Denoise, sampler: Sampler, latents: Tensor,
                   cond: Tensor, *,
                   uncond: Tensor | None = None, steps: int = 50, guidance: float = 7.5,
                   generator: torch.Generator | None = None,
                   progress: Callable[[int, int], None] | None = None) -> Tensor:
    """Run ``steps`` denoising steps from initial noise ``latents`` (scaled by the sampler's
    ``init_noise_sigma`` here). ``progress(i, steps)`` is called after each step.
    ``unet`` is any ``(x (B, C, h, w), t, context) -> (B, C, h, w)`` callable."""
    check = getattr(unet, "check_size", None)
    if check is not None:
        check(latents.shape[-2], latents.shape[-1])
    context = guidance_batch(cond, uncond, guidance)  # (B or 2B, L, D)
    timesteps = sampler.prepare(steps)
    x = latents * sampler.init_noise_sigma
    for i, t in enumerate(timesteps):
        inp = sampler.scale_input(x, i)
        inp = torch.cat([inp, inp]) if context.shape[0] != x.shape[0] else inp
        out = unet(inp, t, context)  # (B or 2B, C, h, w)
        if context.shape[0] != x.shape[0]:
            uncond_out, cond_out = out.chunk(2)
            out = guided(uncond_out, cond_out, guidance)
        x = sampler.step(out, i, x, generator)
        if progress is not None:
            progress(i + 1, steps)
    return x


@torch.no_grad()
def decode(vae: AutoencoderKL, latents: Tensor) -> Tensor:
    """Diffusion latents ``(B, C, h, w)`` -> images ``(B, 3, H, W)`` in [0, 1]."""
    images = vae.decode(vae.unscale(latents))
    return (images / 2 + 0.5).clamp(0, 1)

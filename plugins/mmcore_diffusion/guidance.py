"""Classifier-free guidance: while training, drop the conditioning (replace the text
embedding by the empty prompt's) with some probability; while sampling, run the denoiser on
``[uncond; cond]`` and move away from the unconditional prediction."""

from __future__ import annotations

import torch
from torch import Tensor


def guided(uncond: Tensor, cond: Tensor, scale: float) -> Tensor:
    """``uncond + scale * (cond - uncond)``; both ``(B, C, h, w)``."""
    return uncond + scale * (cond - uncond)


def drop_conditioning(context: Tensor, empty: Tensor, p: float,
                      generator: torch.Generator | None = None) -> Tensor:
    """Each sample's ``context: (B, L, D)`` replaced by ``empty: (1, L, D)`` with chance ``p``."""
    keep = torch.rand(context.shape[0], generator=generator, device=context.device) >= p
    return torch.where(keep[:, None, None], context, empty.to(context.dtype))


def guidance_batch(cond: Tensor, uncond: Tensor | None, scale: float) -> Tensor:
    """The text batch the denoiser sees: ``[uncond; cond]`` (2B, L, D) when guiding, else
    ``cond``. ValueError for a negative (or NaN) scale, and for a scale > 1 without an
    unconditional embedding."""
    if not scale >= 0:
        raise ValueError(f"guidance scale must be >= 0 (1 or less: no guidance), got {scale}")
    if scale <= 1.0:
        return cond
    if uncond is None:
        raise ValueError(f"guidance scale {scale} needs an unconditional (empty prompt) "
                         "embedding; pass uncond or use guidance 1")
    if uncond.shape != cond.shape:
        raise ValueError(f"unconditional embedding {tuple(uncond.shape)} does not match the "
                         f"prompt's {tuple(cond.shape)}")
    return torch.cat([uncond, cond])

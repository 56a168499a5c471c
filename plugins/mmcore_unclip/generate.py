"""``mmcore generate`` for unCLIP: prompt -> CLIP text embedding -> the prior's sampling
loop -> CLIP image embedding -> the decoder's sampling loop -> the codec's decoder.

Two trained models take part. The **decoder** (``unclip-tiny``: a ``unet`` denoiser over
codec latents, cross-attending to the ``clip_image`` embedding projected to a few tokens)
is the model ``mmcore generate RUN`` loads; its spec names the **prior** run
(``metadata: {unclip: {prior: RUN}}``; ``unclip-tiny-prior``: a ``dit`` denoiser over the
one-token image embedding, conditioned on the ``clip_text`` embedding), whose
``clip_text`` preprocessor embeds the prompts with the frozen CLIP. Both loops are
:func:`mmcore_diffusion.pipeline.sample_latents` with each model's own sampler; one
``torch.Generator`` seeded by ``--seed`` draws all noise, so the same seed gives the
same images.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmcore.generation.command import reject_unused
from mmcore.model import device_of
from mmcore.progress import Progress
from mmcore_diffusion.codec import LatentTokenizer
from mmcore_diffusion.denoisers import Denoiser
from mmcore_diffusion.generate import UNUSED, image_size, write_images
from mmcore_diffusion.pipeline import sample_latents
from mmcore_unclip.embeddings import ClipEmbeddingTokenizer

#: where the decoder's spec names its prior run
PRIOR_KEY = ("unclip", "prior")


def decoder_parts(model: Any) -> tuple[Denoiser, LatentTokenizer, ClipEmbeddingTokenizer]:
    """The denoiser, codec tokenizer and image-embedding tokenizer of an unCLIP decoder."""
    fusion = getattr(model, "fusion", None)
    if not isinstance(fusion, Denoiser):
        raise ValueError("this model's fusion is not a diffusion denoiser (unet, dit)")
    tokenizers = dict(model.tokenizers)
    codec, cond = tokenizers.get(fusion.cfg.image), tokenizers.get(fusion.cfg.text)
    if not isinstance(codec, LatentTokenizer):
        raise ValueError(f"modality {fusion.cfg.image!r} has no codec ('latent' tokenizer)")
    if not isinstance(cond, ClipEmbeddingTokenizer) or cond.proj is None:
        raise ValueError(f"modality {fusion.cfg.text!r} is not a projected 'clip-embedding'")
    return fusion, codec, cond


def prior_parts(model: Any) -> tuple[Denoiser, ClipEmbeddingTokenizer, str]:
    """The denoiser, the image-embedding tokenizer and the text modality of a prior."""
    fusion = getattr(model, "fusion", None)
    if not isinstance(fusion, Denoiser):
        raise ValueError("the prior's fusion is not a diffusion denoiser (dit, unet)")
    target = dict(model.tokenizers).get(fusion.cfg.image)
    if not isinstance(target, ClipEmbeddingTokenizer) or target.proj is not None:
        raise ValueError(f"the prior's modality {fusion.cfg.image!r} is not an unprojected "
                         "'clip-embedding'")
    if fusion.cfg.text not in model.preprocessors:
        raise ValueError(f"the prior's modality {fusion.cfg.text!r} has no preprocessor to "
                         "embed prompts with")
    return fusion, target, fusion.cfg.text


def prior_source(model: Any) -> str:
    """The prior run the decoder's spec names (``metadata.unclip.prior``)."""
    meta = getattr(getattr(model, "spec", None), "metadata", None) or {}
    value = (meta.get(PRIOR_KEY[0]) or {}).get(PRIOR_KEY[1]) \
        if isinstance(meta.get(PRIOR_KEY[0]), dict) else None
    if not isinstance(value, str) or not value:
        raise ValueError("this unCLIP decoder names no prior: set metadata.unclip.prior=RUN "
                         "(an unclip-tiny-prior run) when training it")
    if not Path(value).exists():
        raise ValueError(f"the decoder's prior {value} does not exist (metadata.unclip.prior)")
    return value


@torch.no_grad()
def sample_prior(prior: Any, prompts: list[str], *, steps: int, generator: torch.Generator,
                 guidance: float | None = None, progress: Progress | None = None,
                 noise: Tensor | None = None) -> Tensor:
    """Prompts -> sampled CLIP image embeddings ``(B, D)`` of unit norm (see
    :func:`sample_prior_from`)."""
    _, _, text = prior_parts(prior)
    embedded = prior.preprocess(text, prompts)  # (B, Dt) unit norm
    return sample_prior_from(prior, embedded, steps=steps, generator=generator,
                             guidance=guidance, progress=progress, noise=noise)


@torch.no_grad()
def sample_prior_from(prior: Any, text_embeddings: Tensor, *, steps: int,
                      generator: torch.Generator, guidance: float | None = None,
                      progress: Progress | None = None, noise: Tensor | None = None) -> Tensor:
    """CLIP text embeddings ``(B, Dt)`` -> sampled CLIP image embeddings ``(B, D)`` of unit
    norm. ``noise``: the initial ``(B, D, 1, 1)``, else drawn from ``generator``;
    ``guidance``: the prior's scale (default: its fusion's)."""
    prior.eval()
    fusion, target, text = prior_parts(prior)
    embedded = text_embeddings.to(device_of(prior), dtype_of(prior))
    cond = prior.tokenizers[text](embedded).x  # (B, 1, Dt)
    scale = fusion.cfg.guidance if guidance is None else guidance
    uncond = fusion.null_context(cond) if scale > 1.0 else None
    shape = (len(embedded), target.cfg.dim, 1, 1)
    if noise is None:
        noise = torch.randn(shape, generator=generator, device=cond.device).to(cond.dtype)
    elif tuple(noise.shape) != shape:
        raise ValueError(f"initial prior noise {tuple(noise.shape)} does not match {shape}")
    x = sample_latents(fusion.denoise, fusion.sampler(), noise, cond, uncond=uncond,
                       steps=steps, guidance=scale, generator=generator,
                       progress=_tick(progress))
    return target.embedding(x)


@torch.no_grad()
def decode_embeddings(decoder: Any, embeddings: Tensor, *, steps: int,
                      generator: torch.Generator, guidance: float | None = None,
                      progress: Progress | None = None) -> Tensor:
    """CLIP image embeddings ``(B, D)`` -> images ``(B, 3, S, S)`` in [0, 1]."""
    decoder.eval()
    fusion, latent, cond_tok = decoder_parts(decoder)
    codec = latent.codec
    cond = cond_tok(embeddings.to(device_of(decoder), dtype_of(decoder))).x  # (B, K, W)
    scale = fusion.cfg.guidance if guidance is None else guidance
    uncond = fusion.null_context(cond) if scale > 1.0 else None
    side = image_size(decoder, fusion.cfg.image) // int(codec.downsampling)
    noise = torch.randn((len(embeddings), int(codec.latent_channels), side, side),
                        generator=generator, device=cond.device).to(cond.dtype)
    latents = sample_latents(fusion.denoise, fusion.sampler(), noise, cond, uncond=uncond,
                             steps=steps, guidance=scale, generator=generator,
                             progress=_tick(progress))
    return (codec.decode(codec.unscale(latents)) / 2 + 0.5).clamp(0, 1)


def dtype_of(model: Any) -> torch.dtype:
    """The floating dtype of ``model``'s parameters (float32 for a model without any)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _tick(progress: Progress | None) -> Any:
    def tick(done: int, total: int) -> None:
        if progress is not None:
            progress.update(1)
    return tick


class UnclipGenerator:
    """``mmcore generate`` and the ``generation`` eval task's image generator for unCLIP
    decoders (models whose denoiser is conditioned on a projected ``clip-embedding``)."""

    def __init__(self) -> None:
        self._priors: dict[tuple[str, float], Any] = {}

    def accepts(self, model: Any) -> bool:
        try:
            decoder_parts(model)
        except (ValueError, KeyError, AttributeError):
            return False
        return True

    def prior(self, model: Any) -> Any:
        """The decoder's prior model, loaded once per file version."""
        import mmcore
        from mmcore.checkpoint import resolve_model_file

        file = resolve_model_file(prior_source(model))
        key = (str(file.resolve()), file.stat().st_mtime)
        if key not in self._priors:
            self._priors[key] = mmcore.load(file, device=device_of(model))
        return self._priors[key]

    def images(self, model: Any, prompts: list[str], *, steps: int | None = None,
               guidance: float | None = None, seed: int = 0,
               progress: Progress | None = None) -> Tensor:
        """One image per prompt ``(len(prompts), 3, S, S)`` in [0, 1]. ``steps`` (default
        50) for both the prior and the decoder; ``guidance`` is the decoder's (default: its
        own), the prior guides with its own default. Same ``seed``, same images."""
        steps = steps or 50
        prior = self.prior(model)
        generator = torch.Generator(device=device_of(model)).manual_seed(seed)
        embeddings = sample_prior(prior, list(prompts), steps=steps, generator=generator,
                                  progress=progress)
        return decode_embeddings(model, embeddings, steps=steps, generator=generator,
                                 guidance=guidance, progress=progress)

    def run(self, model: Any, args: argparse.Namespace) -> int:
        reject_unused(args, {**UNUSED, "sampler": None}, "unCLIP models")
        n, steps = args.n or 1, args.steps or 50

        def draw(prompt: str, seed: int, bar: Progress) -> Tensor:
            return self.images(model, [prompt] * n, steps=steps, guidance=args.guidance,
                               seed=seed, progress=bar)

        return write_images(args, draw, per_prompt=2 * steps,
                            desc="denoising (prior, decoder)")

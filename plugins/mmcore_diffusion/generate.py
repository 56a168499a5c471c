"""``mmcore generate`` for latent diffusion models: prompts -> text conditioning -> the
guided sampling loop over the denoiser -> the codec's decoder -> PNG files and a grid.

A model qualifies when its fusion is a :class:`~mmcore_diffusion.denoisers.Denoiser` and
its image tokenizer holds a codec. Everything random comes from one ``torch.Generator``
seeded by ``--seed``, so the same seed writes byte-identical files.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from mmcore.commands import UsageError
from mmcore.generation.command import TEXT_OPTIONS, reject_unused
from mmcore.progress import Progress
from mmcore_diffusion.codec import LatentTokenizer
from mmcore_diffusion.denoisers import Denoiser
from mmcore_diffusion.pipeline import sample_latents
from mmcore_diffusion.samplers import SAMPLER_NAMES

UNUSED: dict[str, Any] = {**TEXT_OPTIONS, "image": [], "temperature": None, "top_k": None,
                          "top_p": None, "rerank": None}


def parts(model: Any) -> tuple[Denoiser, LatentTokenizer]:
    """The denoiser and the latent tokenizer of a latent diffusion model."""
    fusion = getattr(model, "fusion", None)
    if not isinstance(fusion, Denoiser):
        raise ValueError("this model's fusion is not a diffusion denoiser (unet, dit)")
    tokenizer = dict(model.tokenizers).get(fusion.cfg.image)
    if not isinstance(tokenizer, LatentTokenizer):
        raise ValueError(f"modality {fusion.cfg.image!r} has no codec ('latent' tokenizer)")
    return fusion, tokenizer


def image_size(model: Any, modality: str) -> int:
    """The side of the images the model was built for (its image preprocessor's)."""
    pre = model.preprocessors.get(modality)
    size = getattr(pre, "image_size", None)
    if not isinstance(size, int):
        raise ValueError(f"modality {modality!r} has no image preprocessor with a size")
    return size


@torch.no_grad()
def text_context(model: Any, modality: str, prompts: list[str]) -> Tensor:
    """Prompts -> the encoded text the denoiser cross-attends to ``(B, L, D)``."""
    batch = {modality: model.preprocess(modality, prompts)}
    return model.encode(batch)[modality].x


@torch.no_grad()
def generate_images(model: Any, prompts: list[str], *, steps: int = 50,
                    guidance: float | None = None, seed: int = 0, sampler: str | None = None,
                    progress: Progress | None = None, size: int | None = None,
                    noise: Tensor | None = None) -> Tensor:
    """Images ``(len(prompts), 3, S, S)`` in [0, 1], one per prompt (repeat a prompt for
    more). ``noise``: the initial latents ``(B, C, S/f, S/f)``, else drawn from ``seed``."""
    model.eval()
    denoiser, tokenizer = parts(model)
    codec = tokenizer.codec
    side = size or image_size(model, denoiser.cfg.image)
    f = int(codec.downsampling)
    if side % f:
        raise ValueError(f"image size {side} is not divisible by {f}, the codec's "
                         "downsampling factor")
    scale = denoiser.cfg.guidance if guidance is None else guidance
    cond = text_context(model, denoiser.cfg.text, prompts)
    uncond = None
    if scale > 1.0:
        uncond = text_context(model, denoiser.cfg.text, [""] * len(prompts)) \
            if denoiser.cfg.null_condition == "empty-prompt" else denoiser.null_context(cond)
    generator = torch.Generator(device=cond.device).manual_seed(seed)
    shape = (len(prompts), int(codec.latent_channels), side // f, side // f)
    if noise is None:
        noise = torch.randn(shape, generator=generator, device=cond.device)
    elif tuple(noise.shape) != shape:
        raise ValueError(f"initial latents {tuple(noise.shape)} do not match {shape}")

    def tick(done: int, total: int) -> None:
        if progress is not None:
            progress.update(1)

    latents = sample_latents(denoiser.denoise, denoiser.sampler(sampler), noise, cond,
                             uncond=uncond, steps=steps, guidance=scale, generator=generator,
                             progress=tick)
    images = codec.decode(codec.unscale(latents))
    return (images / 2 + 0.5).clamp(0, 1)


def to_pil(image: Tensor) -> Image.Image:
    """``(3, H, W)`` in [0, 1] -> an RGB image (rounded to 8 bits)."""
    array = (image.permute(1, 2, 0) * 255).round().to(torch.uint8).cpu().numpy()
    return Image.fromarray(array, "RGB")


def grid(images: list[Image.Image], columns: int, pad: int = 2) -> Image.Image:
    """Images side by side in rows of ``columns``, on white."""
    w, h = images[0].size
    rows = math.ceil(len(images) / columns)
    out = Image.new("RGB", (columns * (w + pad) + pad, rows * (h + pad) + pad), "white")
    for i, image in enumerate(images):
        out.paste(image, (pad + (i % columns) * (w + pad), pad + (i // columns) * (h + pad)))
    return out


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "prompt"


#: ``draw(prompt, seed, bar) -> (N, 3, H, W)`` in [0, 1], advancing ``bar`` as it works
DrawPrompt = Callable[[str, int, Progress], Tensor]


def write_images(args: argparse.Namespace, draw: DrawPrompt, *, per_prompt: int,
                 desc: str, unit: str = "step") -> int:
    """``mmcore generate``'s output for every image family: the k-th ``--prompt`` is drawn
    with seed ``--seed`` + k (a progress bar of ``per_prompt`` units each), its images go
    to ``--out`` as ``SLUG-000.png`` ..., and all of them into ``grid.png`` (a row per
    prompt; a square for one prompt). A ValueError from ``draw`` is a one-line error."""
    if not args.out:
        raise UsageError("--out DIR is needed: where to write the images")
    seed = 0 if args.seed is None else args.seed
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Image.Image] = []
    with Progress(len(args.prompt) * per_prompt, desc=desc, unit=unit) as bar:
        for k, prompt in enumerate(args.prompt):
            try:
                images = draw(prompt, seed + k, bar)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            for i, image in enumerate(images):
                pil = to_pil(image)
                pil.save(out / f"{slug(prompt)}-{i:03d}.png")
                written.append(pil)
    n = len(written) // len(args.prompt)
    grid(written, math.ceil(math.sqrt(n)) if len(args.prompt) == 1 else n).save(
        out / "grid.png")
    print(f"wrote {len(written)} images and grid.png to {out}")
    return 0


class LatentDiffusionGenerator:
    """``mmcore generate`` for models whose fusion is a diffusion denoiser; also an image
    generator for ``mmcore eval --task generation`` (:mod:`mmcore_diffusion.tasks`)."""

    def accepts(self, model: Any) -> bool:
        try:
            denoiser, _ = parts(model)
        except (ValueError, KeyError, AttributeError):
            return False
        # a condition tokenizer that says it takes no prompts (unCLIP's image embedding)
        # belongs to another generator
        condition = dict(model.tokenizers).get(denoiser.cfg.text)
        return bool(getattr(condition, "takes_prompts", True))

    def images(self, model: Any, prompts: list[str], *, steps: int | None = None,
               guidance: float | None = None, seed: int = 0,
               progress: Progress | None = None, sampler: str | None = None) -> Tensor:
        """One image per prompt ``(len(prompts), 3, S, S)`` in [0, 1], ``S`` the model's
        image size; ``steps`` (default 50) and ``guidance`` (default: the denoiser's own);
        the same ``seed`` gives the same images. ``progress`` advances once per step.
        ``sampler``: a ``--sampler`` name (:data:`SAMPLER_NAMES`; default: the model's)."""
        cls = SAMPLER_NAMES[sampler] if sampler is not None else None
        return generate_images(model, list(prompts), steps=steps or 50, guidance=guidance,
                               seed=seed, progress=progress, sampler=cls)

    def run(self, model: Any, args: argparse.Namespace) -> int:
        reject_unused(args, UNUSED, "latent diffusion models")
        n, steps = args.n or 1, args.steps or 50
        sampler = getattr(args, "sampler", None)

        def draw(prompt: str, seed: int, bar: Progress) -> Tensor:
            return self.images(model, [prompt] * n, steps=steps, guidance=args.guidance,
                               seed=seed, progress=bar, sampler=sampler)

        return write_images(args, draw, per_prompt=steps, desc="denoising")

"""``mmcore generate`` for DALL-E models: each prompt -> ``--n`` code grids sampled through
the one generation loop (temperature, top-k, top-p; a progress bar over the image tokens)
-> the VQ decoder -> PNG files and a grid (the diffusion plugin's writers). With a CLIP
(``--rerank CLIP_RUN``) the candidates are written best first with their scores.

The same ``--seed`` writes byte-identical files: prompt ``k`` samples from a generator
seeded with ``seed + k``.
"""

from __future__ import annotations

import argparse
from typing import Any

from torch import Tensor

from mmcore.commands import UsageError, load_any_model
from mmcore.generation.command import TEXT_OPTIONS, reject_unused
from mmcore.progress import Progress
from mmcore_dalle.rerank import rerank
from mmcore_dalle.runner import dalle_parts, sample_images, sampling_config
from mmcore_diffusion.generate import write_images

UNUSED: dict[str, Any] = {**TEXT_OPTIONS, "image": [], "steps": None, "guidance": None,
                          "sampler": None}


class DalleGenerator:
    """Drives models whose fusion is ``dalle-prior``."""

    def accepts(self, model: Any) -> bool:
        try:
            dalle_parts(model)
        except (ValueError, KeyError, AttributeError):
            return False
        return True

    def images(self, model: Any, prompts: list[str], *, steps: int | None = None,
               guidance: float | None = None, seed: int = 0) -> Tensor:
        """One image per prompt ``(len(prompts), 3, H, W)`` in [0, 1], sampled with the
        prior's default temperature / top-k / top-p (``steps`` and ``guidance`` are for
        diffusion models and are not used)."""
        return sample_images(model, list(prompts), sampling_config(model, seed=seed))

    def run(self, model: Any, args: argparse.Namespace) -> int:
        reject_unused(args, UNUSED, "DALL-E models")
        if not args.out:
            raise UsageError("--out DIR is needed: where to write the images")
        n = args.n or 1
        clip = _load_clip(getattr(args, "rerank", None))

        def draw(prompt: str, seed: int, bar: Progress) -> Tensor:
            config = sampling_config(model, n=n, seed=seed, temperature=args.temperature,
                                     top_k=args.top_k, top_p=args.top_p)
            images = sample_images(model, [prompt], config, tick=lambda: bar.update(1))
            if clip is not None:
                images, scores = rerank(clip, prompt, images)
                print(f"{prompt!r}: CLIP scores best first "
                      + " ".join(f"{s:.3f}" for s in scores.tolist()))
            return images

        tokens = dalle_parts(model)[1].cfg.image_tokens
        return write_images(args, draw, per_prompt=tokens, desc="image tokens", unit="token")


def _load_clip(source: str | None) -> Any:
    """The reranking model, or None; UsageError for one without a contrastive pair."""
    if not source:
        return None
    from mmcore.evaluate import contrastive_pair

    clip = load_any_model(source)
    try:
        contrastive_pair(clip)
    except ValueError as exc:
        raise UsageError(f"--rerank {source}: {exc}") from None
    return clip

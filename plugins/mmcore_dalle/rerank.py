"""CLIP reranking, as DALL-E did: generate N candidates, keep the best by a contrastive
model's image-text similarity. Any model with a contrastive objective whose first pair
names (image-like, text-like) embeddings qualifies (a ``clip-tiny`` run, an imported CLIP).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mmcore.evaluate import contrastive_pair
from mmcore_diffusion.generate import to_pil


@torch.no_grad()
def clip_scores(clip: Any, prompt: str, images: Tensor) -> Tensor:
    """Cosine similarity of each image ``(N, 3, H, W)`` in [0, 1] to ``prompt``. (N,)"""
    clip.eval()
    image_like, text_like = contrastive_pair(clip)
    pixels = clip.preprocess(image_like, [to_pil(image) for image in images])
    image_emb = F.normalize(clip.embed(image_like, pixels), dim=-1)  # (N, E)
    text_emb = F.normalize(clip.embed(text_like, clip.preprocess(text_like, [prompt])), dim=-1)
    return (image_emb @ text_emb.t())[:, 0]


def rerank(clip: Any, prompt: str, images: Tensor) -> tuple[Tensor, Tensor]:
    """(images best first (N, 3, H, W), their scores (N,) descending)."""
    scores = clip_scores(clip, prompt, images)
    order = torch.argsort(scores, descending=True, stable=True)
    return images[order], scores[order]

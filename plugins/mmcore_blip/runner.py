"""Captioning and matching with a BLIP model: the decoder as a
:class:`mmcore.generation.Decoder` (so captions come from the one generation loop), and
ITM / ITC scores of (image, text) pairs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mmcore.contract import Tokens
from mmcore.generation import GenerationConfig, GenerationOutput, generate
from mmcore_blip.fusion import BlipFusion, DecodeCache
from mmcore_blip.objectives import BlipLM, BlipMatching
from mmcore_blip.text import BlipTextEmbedding


@dataclass
class BlipParts:
    """The modules of a BLIP model that captioning and matching use."""

    fusion: BlipFusion
    embedding: BlipTextEmbedding
    lm: BlipLM | None
    itm: BlipMatching | None


def blip_parts(model: Any) -> BlipParts:
    """The BLIP modules of ``model``; a ValueError when it is not a BLIP model."""
    fusion = getattr(model, "fusion", None)
    if not isinstance(fusion, BlipFusion):
        raise ValueError(f"this model's fusion is {type(fusion).__name__}, not BLIP's "
                         "(fusion type: blip)")
    embedding = model.tokenizers[fusion.cfg.text]
    if not isinstance(embedding, BlipTextEmbedding):
        raise ValueError("a BLIP model's text tokenizer must be blip-text-embedding")
    objectives = list(model.objectives.values())
    lm = next((o for o in objectives if isinstance(o, BlipLM)), None)
    itm = next((o for o in objectives if isinstance(o, BlipMatching)), None)
    return BlipParts(fusion, embedding, lm, itm)


class BlipCaptionRunner:
    """The BLIP decoder reading image tokens (B, Ni, Dv), for the generation loop. Prompts
    (the [DEC] token, optionally a prefix) are not padded."""

    def __init__(self, parts: BlipParts, image: Tokens) -> None:
        if parts.lm is None:
            raise ValueError("this BLIP model has no blip-lm objective (no decoder head)")
        self.parts, self.lm, self.image = parts, parts.lm, image

    def _image(self, rows: int) -> Tokens:
        times = rows // self.image.x.shape[0]
        return self.image if times == 1 else Tokens(self.image.x.repeat_interleave(times, 0))

    def _logits(self, ids: Tensor, cache: DecodeCache) -> Tensor:
        x = self.parts.embedding.embed(ids, cache.length)  # (R, n, D)
        return self.lm.head(self.parts.fusion.decode_step(x, cache)[:, -1])  # (R, V)

    def prefill(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, DecodeCache]:
        if not bool(attention_mask.all()):
            raise ValueError("the BLIP decoder takes unpadded prompts")
        cache = self.parts.fusion.start_cache(self._image(input_ids.shape[0]))
        return self._logits(input_ids, cache), cache

    def step(self, next_ids: Tensor, attention_mask: Tensor,
             cache: DecodeCache) -> tuple[Tensor, DecodeCache]:
        return self._logits(next_ids, cache), cache

    def reorder_cache(self, cache: DecodeCache, rows: Tensor) -> DecodeCache:
        return self.parts.fusion.reorder(cache, rows)


Pixels = Tensor | dict[str, Tensor]


def preprocess_images(model: Any, images: Sequence[Any] | Pixels) -> dict[str, Tensor]:
    """Raw images (paths, PIL) -> pixels (B, 3, S, S) for the image modality and each of
    its views, by modality; pixels already made pass through (a tensor: the image
    modality's, allowed only without views)."""
    fusion = blip_parts(model).fusion
    if isinstance(images, dict):
        return images
    if isinstance(images, Tensor):
        if fusion.cfg.views:
            raise ValueError(f"this BLIP joins the views {fusion.cfg.views}: give raw images, "
                             "or pixels by modality")
        return {fusion.cfg.image: images}
    return dict(model.preprocess_with_views(fusion.cfg.image, images))


def encode_images(model: Any, images: Sequence[Any] | Pixels) -> Tokens:
    """Raw images (paths, PIL) or pixels (see :func:`preprocess_images`) -> encoded image
    tokens, the views joined (B, Ni, Dv)."""
    fusion = blip_parts(model).fusion
    tokens = fusion.image_tokens(model.encode(preprocess_images(model, images)))
    assert tokens is not None
    return tokens


@torch.no_grad()
def generate_captions(model: Any, images: Sequence[Any] | Pixels, *,
                      config: GenerationConfig | None = None,
                      generator: torch.Generator | None = None) -> GenerationOutput:
    """Caption ids for each image through the one loop: the prompt is [DEC]
    (``fusion.dec_token_id``); decoding stops at the LM's ``eos_id``."""
    parts = blip_parts(model)
    if parts.lm is None or parts.fusion.cfg.dec_token_id is None:
        raise ValueError("captioning needs a blip-lm objective and the fusion's dec_token_id")
    image = encode_images(model, images)
    config = config or GenerationConfig(max_new_tokens=30)
    config = config.model_copy(update={
        "eos_token_id": parts.lm.cfg.eos_id if config.eos_token_id is None
        else config.eos_token_id,
        "pad_token_id": parts.lm.cfg.pad_id if config.pad_token_id is None
        else config.pad_token_id})
    prompt = torch.full((image.x.shape[0], 1), parts.fusion.cfg.dec_token_id,
                        dtype=torch.long, device=image.x.device)
    return generate(BlipCaptionRunner(parts, image), prompt, config=config,
                    generator=generator)


def decode_text(model: Any, ids: Tensor) -> list[str]:
    """Generated ids (R, n) -> strings: byte-level ids as UTF-8, or the text preprocessor's
    own ``decode``; ids from ``eos_id`` on are dropped."""
    parts = blip_parts(model)
    eos = parts.lm.cfg.eos_id if parts.lm is not None else None
    pre = model.preprocessors.get(parts.fusion.cfg.text)
    out = []
    for row in ids.tolist():
        if eos is not None and eos in row:
            row = row[: row.index(eos)]
        tokenizer = getattr(pre, "tokenizer", None)
        if tokenizer is not None and hasattr(tokenizer, "decode"):
            out.append(tokenizer.decode(row, skip_special_tokens=True))
        else:
            out.append(bytes(i for i in row if i < 256).decode("utf-8", errors="replace"))
    return out


def caption(model: Any, images: Sequence[Any] | Pixels, *,
            config: GenerationConfig | None = None,
            generator: torch.Generator | None = None) -> list[str]:
    """One caption per image (greedy unless ``config`` samples)."""
    return decode_text(model, generate_captions(model, images, config=config,
                                                generator=generator).new_tokens)


@torch.no_grad()
def itm_scores(model: Any, pixels: Pixels, text: Any) -> Tensor:
    """P(matched) of each (image i, text i): pixels (see :func:`preprocess_images`) and the
    collated text input. -> (B,) from the ITM head over the grounded encoder's first token."""
    parts = blip_parts(model)
    if parts.itm is None:
        raise ValueError("this BLIP model has no blip-matching objective (no ITM head)")
    tokens = model.encode({**preprocess_images(model, pixels), parts.fusion.cfg.text: text})
    fused = parts.fusion(tokens).tokens["fused"]
    return torch.softmax(parts.itm.head(fused.x[:, 0]).float(), dim=-1)[:, 1]

"""The DALL-E prior as seen by the one generation loop (:mod:`mmcore.generation`):
:class:`DalleRunner` implements its ``Decoder`` protocol over the joint vocabulary, and
:class:`ImageCodesOnly` is the logit processor that keeps every generated token an image
code. :func:`sample_codes` and :func:`sample_images` go from prompts to code grids and to
pixels; nothing here chooses tokens (the loop's temperature / top-k / top-p do)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mmcore.generation import GenerationConfig, stream
from mmcore.generation.processors import NEG_INF
from mmcore.layers.kv_cache import KVCache
from mmcore_dalle.prior import DallePrior, VQCodesTokenizer
from mmcore_llama import LMEmbedding, LMHead


def dalle_parts(model: Any) -> tuple[LMEmbedding, DallePrior, LMHead, VQCodesTokenizer]:
    """(text embedding, prior fusion, lm-head, codes tokenizer) of a DALL-E model;
    ValueError naming what is missing otherwise."""
    fusion = getattr(model, "fusion", None)
    if not isinstance(fusion, DallePrior):
        raise ValueError(f"not a DALL-E model: its fusion is {type(fusion).__name__}")
    tokenizers = dict(model.tokenizers)
    embedding, codes = tokenizers.get(fusion.cfg.text), tokenizers.get(fusion.cfg.image)
    heads = [h for h in model.heads.values() if isinstance(h, LMHead)]
    if not isinstance(embedding, LMEmbedding) or len(heads) != 1:
        raise ValueError("a DALL-E model needs an lm-embedding text tokenizer and one lm-head")
    if not isinstance(codes, VQCodesTokenizer):
        raise ValueError(f"a DALL-E model needs a vq-codes tokenizer for {fusion.cfg.image!r}")
    return embedding, fusion, heads[0], codes


@dataclass
class PriorCache:
    """The trunk's KV cache and how many image tokens each row has seen (same for all)."""

    kv: KVCache
    image_tokens: int


class ImageCodesOnly:
    """Logit processor: every id outside the image codes ``[start, end)`` gets -inf."""

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, end

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        keep = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
        keep[self.start : self.end] = True
        return scores.masked_fill(~keep, NEG_INF)


class DalleRunner:
    """``prefill`` [text; BOI] prompts (text right-padded as in training; the mask says
    which ids are real), ``step`` one image token at a time on the KV cache."""

    def __init__(self, model: Any) -> None:
        self.embedding, self.prior, self.head, self.codes = dalle_parts(model)
        self.cfg = self.prior.cfg

    def embed(self, ids: Tensor, first_index: int) -> Tensor:
        """Joint ids (R, T) -> (R, T, D); the image codes among them are grid cells
        ``first_index, first_index + 1, ...`` in order (BOI has no cell)."""
        text = ids < self.cfg.text_vocab
        image = ~text & (ids != self.cfg.boi)
        index = torch.where(image, image.long().cumsum(1) - 1 + first_index, -1)
        x_text = self.embedding.embed(ids.masked_fill(~text, 0))
        x_image = self.prior.embed_image(ids.masked_fill(text, self.cfg.boi), index)
        return torch.where(text.unsqueeze(-1), x_text, x_image)

    def _logits(self, ids: Tensor, mask: Tensor, cache: PriorCache) -> Tensor:
        hidden = self.prior.hidden(self.embed(ids, cache.image_tokens), mask, cache.kv)
        return self.head.project(hidden[:, -1], self.embedding)  # (R, V)

    @torch.no_grad()
    def prefill(self, input_ids: Tensor, attention_mask: Tensor | None = None
                ) -> tuple[Tensor, PriorCache]:
        mask = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None
                else attention_mask.bool())
        cache = PriorCache(self.prior.new_cache(), 0)
        logits = self._logits(input_ids, mask, cache)
        seen = ((input_ids >= self.cfg.text_vocab) & (input_ids != self.cfg.boi)).sum(1)
        cache.image_tokens = int(seen.max()) if seen.numel() else 0
        return logits, cache

    @torch.no_grad()
    def step(self, next_ids: Tensor, attention_mask: Tensor | None, cache: PriorCache
             ) -> tuple[Tensor, PriorCache]:
        mask = (torch.ones_like(next_ids, dtype=torch.bool) if attention_mask is None
                else attention_mask[:, -1:].bool())
        logits = self._logits(next_ids, mask, cache)
        cache.image_tokens += 1
        return logits, cache

    def reorder_cache(self, cache: PriorCache, rows: Tensor) -> PriorCache:
        return PriorCache(cache.kv.reorder(rows), cache.image_tokens)

    def prompts(self, model: Any, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Texts -> ([text ids; BOI] (B, T + 1), mask (B, T + 1)), as the prior trained."""
        text = model.preprocess(self.cfg.text, texts)
        ids, mask = text["ids"], text["mask"].bool()
        boi = torch.full((ids.shape[0], 1), self.cfg.boi, dtype=ids.dtype)
        ids, mask = torch.cat([ids, boi], 1), torch.cat([mask, torch.ones_like(boi).bool()], 1)
        device = self.embedding.weight.device
        return ids.to(device), mask.to(device)

    def processor(self) -> ImageCodesOnly:
        return ImageCodesOnly(self.cfg.text_vocab, self.cfg.boi)


def sampling_config(model: Any, *, n: int = 1, seed: int = 0, temperature: float | None = None,
                    top_k: int | None = None, top_p: float | None = None) -> GenerationConfig:
    """The loop's options for one image per row: ``image_tokens`` new tokens, sampled with
    the given warpers, else the prior's own defaults; temperature 0: greedy."""
    cfg = dalle_parts(model)[1].cfg
    temperature = cfg.temperature if temperature is None else temperature
    fields: dict[str, Any] = {"max_new_tokens": cfg.image_tokens, "seed": seed,
                              "do_sample": temperature > 0, "num_return_sequences": n}
    if temperature > 0:
        fields.update(temperature=temperature, top_k=top_k or cfg.top_k,
                      top_p=cfg.top_p if top_p is None else top_p)
    return GenerationConfig(**fields)


@torch.no_grad()
def sample_codes(model: Any, prompts: list[str], config: GenerationConfig,
                 tick: Callable[[], None] | None = None) -> Tensor:
    """Prompts -> code ids (B * num_return_sequences, N) in [0, codebook_size), rows
    prompt by prompt; ``tick()`` after each generated token."""
    model.eval()
    runner = DalleRunner(model)
    ids, mask = runner.prompts(model, prompts)
    steps = []
    for token in stream(runner, ids, attention_mask=mask, config=config,
                        processors=[runner.processor()]):
        steps.append(token)
        if tick is not None:
            tick()
    return torch.stack(steps, dim=1) - runner.cfg.text_vocab


@torch.no_grad()
def decode_codes(model: Any, codes: Tensor) -> Tensor:
    """Code ids (B, N) -> images (B, 3, H, W) in [0, 1] through the VQ decoder."""
    _, prior, _, tokenizer = dalle_parts(model)
    images = tokenizer.decode(codes, prior.grid)
    return (images / 2 + 0.5).clamp(0, 1)


def sample_images(model: Any, prompts: list[str], config: GenerationConfig,
                  tick: Callable[[], None] | None = None) -> Tensor:
    """Prompts -> images (B * num_return_sequences, 3, H, W) in [0, 1]."""
    return decode_codes(model, sample_codes(model, prompts, config, tick))

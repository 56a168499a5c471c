"""LLaVA as seen by the generation loop: :class:`LlavaRunner` implements
:class:`mmcore.generation.Decoder`; its ``prefill`` splices the images' projected tokens into
the prompt embeddings, ``step`` is the LM's. :func:`answer` goes from raw images and user
messages to answers (the ``generate`` command and the ``vqa`` task use it)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from mmcore.generation import GenerationConfig, generate, stream
from mmcore.layers.kv_cache import KVCache
from mmcore_llama import LMEmbedding, LMHead, lm_parts
from mmcore_llava.chat import LlavaChatPreprocessor, count_placeholders, left_padded
from mmcore_llava.fusion import LlavaFusion


def llava_parts(model: Any) -> tuple[LMEmbedding, LlavaFusion, LMHead]:
    """(text embedding, LLaVA fusion, lm-head) of a built model; ValueError if not."""
    embedding, fusion, head = lm_parts(model, LlavaFusion, "LLaVA")
    return embedding, fusion, head


class LlavaRunner:
    """The generation loop's view of a LLaVA model holding ``pixels (K, 3, S, S)``: the
    images of the prompts, in the order of their placeholders (prompt after prompt); a
    dict of them by modality when the fusion has ``views``."""

    def __init__(self, model: Any, pixels: Tensor | dict[str, Tensor] | None) -> None:
        self.model = model
        self.embedding, self.fusion, self.head = llava_parts(model)
        self.features: Tensor | None = None
        if pixels is not None:
            inputs = pixels if isinstance(pixels, dict) else {self.fusion.cfg.image: pixels}
            features = self.fusion.image_features(model.encode(inputs))  # (K, N, Dv)
            self.features = None if features is None else self.fusion.project(features)

    def _rows_features(self, ids: Tensor) -> Tensor | None:
        """The image tokens of rows ``ids (R, T)``, where each of the B prompts may be
        repeated R // B times (beam search): (K * R // B, N, D)."""
        if self.features is None:
            return None
        per_image = self.features.shape[1]
        counts = ((ids == self.fusion.cfg.image_token_id).sum(1) // per_image).tolist()
        images = self.features.shape[0]
        repeat = sum(counts) // images if images and sum(counts) % images == 0 else 1
        if repeat <= 1 or ids.shape[0] % repeat:
            return self.features
        out, start = [], 0
        for row in range(0, ids.shape[0], repeat):  # rows come in groups of ``repeat``
            own = self.features[start : start + counts[row]]
            out += [own] * repeat
            start += counts[row]
        return torch.cat(out) if out else self.features

    @torch.no_grad()
    def prefill(self, input_ids: Tensor, attention_mask: Tensor | None = None
                ) -> tuple[Tensor, KVCache]:
        """Left-padded prompts (R, T) with their placeholders -> (next logits (R, V), cache)."""
        from mmcore_llava.fusion import splice

        mask = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None
                else attention_mask.bool())
        embeds = splice(self.embedding.embed(input_ids), input_ids,
                        self._rows_features(input_ids), self.fusion.cfg.image_token_id)
        cache = self.fusion.new_cache()
        hidden = self.fusion.hidden(embeds, mask, cache)  # (R, T, D)
        return self.head.project(hidden[:, -1], self.embedding), cache

    @torch.no_grad()
    def step(self, next_ids: Tensor, attention_mask: Tensor | None, cache: KVCache
             ) -> tuple[Tensor, KVCache]:
        """New ids (R, 1) and the grown mask (R, S + 1) -> (next logits (R, V), cache)."""
        mask = (torch.ones_like(next_ids, dtype=torch.bool) if attention_mask is None
                else attention_mask[:, -1:].bool())
        hidden = self.fusion.hidden(self.embedding.embed(next_ids), mask, cache)
        return self.head.project(hidden[:, -1], self.embedding), cache

    def reorder_cache(self, cache: KVCache, rows: Tensor) -> KVCache:
        return cache.reorder(rows)


def chat_preprocessor(model: Any) -> LlavaChatPreprocessor:
    """The model's ``llava-chat`` text preprocessor; ValueError if it has none."""
    _, fusion, _ = llava_parts(model)
    pre = model.preprocessors.get(fusion.cfg.text)
    if not isinstance(pre, LlavaChatPreprocessor):
        raise ValueError(f"modality {fusion.cfg.text!r} needs a llava-chat preprocessor to "
                         f"turn prompts into ids; it has {type(pre).__name__}")
    return pre


def check_images(prompts: Sequence[str], images: Sequence[Any]) -> None:
    """ValueError naming both counts when the prompts' placeholders and images differ."""
    placeholders = sum(count_placeholders(p) for p in prompts)
    if placeholders != len(images):
        raise ValueError(f"the prompt(s) hold {placeholders} <image> placeholder(s) but "
                         f"{len(images)} image(s) were given; give one image per <image>")


def image_pixels(model: Any, images: Sequence[Any]) -> dict[str, Tensor] | None:
    """The images' pixels for the image modality and each of its views, by modality, on
    the model's device (:meth:`MultimodalModel.preprocess_with_views`); None for none."""
    if not images:
        return None
    device = next(model.parameters()).device
    inputs = model.preprocess_with_views(llava_parts(model)[1].cfg.image, list(images))
    return {m: x.to(device) for m, x in inputs.items()}


def prepare(model: Any, prompts: Sequence[str], images: Sequence[Any]
            ) -> tuple[LlavaRunner, Tensor, Tensor]:
    """(runner, left-padded ids (B, T), mask (B, T)) for user messages and their images."""
    check_images(prompts, images)
    chat = chat_preprocessor(model)
    batch = chat(list(prompts))
    ids, mask = left_padded(batch["ids"], batch["mask"], chat.pad_token_id)
    device = next(model.parameters()).device
    runner = LlavaRunner(model, image_pixels(model, images))
    return runner, ids.to(device), mask.to(device)


def generate_answers(model: Any, prompts: Sequence[str], images: Sequence[Any],
                     config: GenerationConfig) -> list[str]:
    """Answers to user messages with ``<image>`` placeholders, decoded (eos dropped)."""
    runner, ids, mask = prepare(model, prompts, images)
    out = generate(runner, ids, attention_mask=mask, config=config)
    chat = chat_preprocessor(model)
    return [chat.decode(row.tolist()).strip() for row in out.new_tokens]


def answer(model: Any, prompts: Sequence[str], images: Sequence[Any], *,
           max_new_tokens: int = 16) -> list[str]:
    """Greedy answers of at most ``max_new_tokens`` tokens."""
    chat = chat_preprocessor(model)
    config = GenerationConfig(eos_token_id=chat.eos_token_id, pad_token_id=chat.pad_token_id,
                              max_new_tokens=max_new_tokens)
    return generate_answers(model, prompts, images, config)


def stream_answer(model: Any, prompt: str, images: Sequence[Any],
                  config: GenerationConfig) -> Iterator[str]:
    """One prompt's answer, piece by piece as the tokens come."""
    runner, ids, mask = prepare(model, [prompt], images)
    chat = chat_preprocessor(model)
    for token in stream(runner, ids, attention_mask=mask, config=config):
        if int(token[0]) == chat.eos_token_id:
            return
        yield chat.decode([int(token[0])])

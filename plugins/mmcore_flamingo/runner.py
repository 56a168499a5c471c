"""Flamingo as seen by the generation loop: :class:`FlamingoRunner` implements
:class:`mmcore.generation.Decoder`. ``prefill`` runs interleaved prompts with their images;
``step`` feeds each new token, which keeps seeing the row's last image (a generated
``<image>`` would bring no image, so that id is suppressed). :func:`complete` goes from
prompts and raw images to generated text (``mmcore generate`` and ``few-shot`` use it)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mmcore.generation import GenerationConfig, generate, stream
from mmcore.layers.kv_cache import KVCache
from mmcore_flamingo.fusion import FlamingoFusion
from mmcore_flamingo.masking import attend_mask, check_count, media_index, per_row_media
from mmcore_flamingo.text import FlamingoTextPreprocessor
from mmcore_llama import LMEmbedding, LMHead, left_pad, lm_parts


def flamingo_parts(model: Any) -> tuple[LMEmbedding, FlamingoFusion, LMHead]:
    """(text embedding, Flamingo fusion, lm-head) of a built model; ValueError if not."""
    embedding, fusion, head = lm_parts(model, FlamingoFusion, "Flamingo")
    return embedding, fusion, head


@dataclass
class FlamingoCache:
    """The trunk's keys/values, each row's visual tokens (R, S, Dv) and their owners
    (R, S), and the image each row's next token sees (R, 1)."""

    kv: KVCache
    visual: Tensor | None = None
    owner: Tensor | None = None
    last: Tensor | None = None


class FlamingoRunner:
    """The generation loop's view of a Flamingo model holding ``pixels (K, 3, S, S)``: the
    images of the prompts in the order of their ``<image>`` markers, prompt after prompt (a
    dict of them by modality when the fusion has ``views``)."""

    def __init__(self, model: Any, pixels: Tensor | dict[str, Tensor] | None) -> None:
        self.embedding, self.fusion, self.head = flamingo_parts(model)
        self.features: Tensor | None = None
        if pixels is not None:
            inputs = pixels if isinstance(pixels, dict) else {self.fusion.cfg.image: pixels}
            self.features = self.fusion.encode_media(model.encode(inputs))  # (K, M, Dv)

    def _rows_features(self, per_row: Tensor) -> Tensor:
        """The images of the rows, where each of the B prompts may be repeated R / B times
        in a row (beams): (sum(per_row), M, Dv)."""
        assert self.features is not None
        total, images = int(per_row.sum()), self.features.shape[0]
        if total == images or images == 0 or total % images:
            return self.features
        repeat = total // images
        out, start = [], 0
        for row in range(0, per_row.shape[0], repeat):
            count = int(per_row[row])
            out += [self.features[start : start + count]] * repeat
            start += count
        return torch.cat(out)

    def _run(self, ids: Tensor, mask: Tensor, cache: FlamingoCache, index: Tensor) -> Tensor:
        embeds = self.embedding.embed(ids)
        if cache.visual is None or cache.owner is None:
            hidden = self.fusion.stack(embeds, mask, cache.kv)
        else:
            hook = self.fusion.hook(cache.visual, attend_mask(index, cache.owner))
            hidden = self.fusion.stack(embeds, mask, cache.kv, hook=hook)  # (R, T, D)
        return self.head.project(hidden[:, -1], self.embedding)  # (R, V)

    @torch.no_grad()
    def prefill(self, input_ids: Tensor, attention_mask: Tensor | None = None
                ) -> tuple[Tensor, FlamingoCache]:
        """Left-padded prompts (R, T) with their markers -> (next logits (R, V), cache)."""
        mask = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None
                else attention_mask.bool())
        media = self.fusion.cfg.media_token_id
        cache = FlamingoCache(self.fusion.new_cache())
        index = media_index(input_ids, media)
        if self.features is None:
            check_count(input_ids, 0, media)
        else:
            per_row = (input_ids == media).sum(1)
            features = self._rows_features(per_row)
            check_count(input_ids, features.shape[0], media)
            cache.visual, cache.owner = per_row_media(features, per_row)
        cache.last = index[:, -1:]
        return self._run(input_ids, mask, cache, index), cache

    @torch.no_grad()
    def step(self, next_ids: Tensor, attention_mask: Tensor | None, cache: FlamingoCache
             ) -> tuple[Tensor, FlamingoCache]:
        """New ids (R, 1) and the grown mask (R, S + 1) -> (next logits (R, V), cache)."""
        mask = (torch.ones_like(next_ids, dtype=torch.bool) if attention_mask is None
                else attention_mask[:, -1:].bool())
        assert cache.last is not None
        return self._run(next_ids, mask, cache, cache.last), cache

    def reorder_cache(self, cache: FlamingoCache, rows: Tensor) -> FlamingoCache:
        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[rows.to(t.device)]

        return FlamingoCache(cache.kv.reorder(rows), pick(cache.visual), pick(cache.owner),
                             pick(cache.last))


def text_preprocessor(model: Any) -> FlamingoTextPreprocessor:
    """The model's ``flamingo-text`` preprocessor; ValueError if it has none."""
    _, fusion, _ = flamingo_parts(model)
    pre = model.preprocessors.get(fusion.cfg.text)
    if not isinstance(pre, FlamingoTextPreprocessor):
        raise ValueError(f"modality {fusion.cfg.text!r} needs a flamingo-text preprocessor to "
                         f"turn prompts into ids; it has {type(pre).__name__}")
    return pre


def check_images(prompts: Sequence[str], images: Sequence[Any]) -> None:
    """ValueError naming both counts when the prompts' markers and the images differ."""
    markers = sum(p.count("<image>") for p in prompts)
    if markers != len(images):
        more = "more" if markers > len(images) else "fewer"
        raise ValueError(f"the prompt(s) hold {markers} <image> marker(s) but {len(images)} "
                         f"image(s) were given ({more} markers than images); give one "
                         "image per <image>, in order")


def prepare(model: Any, prompts: Sequence[str], images: Sequence[Any]
            ) -> tuple[FlamingoRunner, Tensor, Tensor]:
    """(runner, left-padded ids (B, T), mask (B, T)) for interleaved prompts and images."""
    check_images(prompts, images)
    pre = text_preprocessor(model)
    fusion = flamingo_parts(model)[1]
    rows = [pre.row({"prompt": p}) for p in prompts]
    ids, mask = left_pad(rows, pre.pad_token_id)
    device = next(model.parameters()).device
    pixels = {m: x.to(device) for m, x in model.preprocess_with_views(
        fusion.cfg.image, [list(images)]).items()} if images else None
    runner = FlamingoRunner(model, pixels)
    return runner, ids.to(device), mask.to(device)


def default_config(model: Any, max_new_tokens: int = 16) -> GenerationConfig:
    """Greedy, stopping at ``<|endofchunk|>`` or EOS, never generating ``<image>``."""
    pre = text_preprocessor(model)
    return GenerationConfig(eos_token_id=[pre.end_of_chunk_id, pre.eos_token_id],
                            pad_token_id=pre.pad_token_id, max_new_tokens=max_new_tokens,
                            suppress_tokens=[pre.media_token_id])


def complete(model: Any, prompts: Sequence[str], images: Sequence[Any],
             config: GenerationConfig | None = None) -> list[str]:
    """Each prompt's continuation (up to its end of chunk), decoded."""
    config = config or default_config(model)
    runner, ids, mask = prepare(model, prompts, images)
    out = generate(runner, ids, attention_mask=mask, config=config)
    pre = text_preprocessor(model)
    stops = {pre.end_of_chunk_id, pre.eos_token_id, pre.pad_token_id}
    return [pre.decode([t for t in row.tolist() if t not in stops]) for row in out.new_tokens]


def stream_completion(model: Any, prompt: str, images: Sequence[Any],
                      config: GenerationConfig) -> Iterator[str]:
    """One prompt's continuation, piece by piece as the tokens come."""
    runner, ids, mask = prepare(model, [prompt], images)
    pre = text_preprocessor(model)
    for token in stream(runner, ids, attention_mask=mask, config=config):
        if int(token[0]) in (pre.end_of_chunk_id, pre.eos_token_id):
            return
        yield pre.decode([int(token[0])])

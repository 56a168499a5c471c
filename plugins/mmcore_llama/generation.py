"""The LM as seen by the generation loop: :class:`CausalLMRunner` implements
:class:`mmcore.generation.Decoder` (``prefill`` a batch of left-padded prompts, ``step``
one token at a time on the KV cache, ``reorder_cache`` for beams). It decodes nothing
itself: ``mmcore.generation.generate(CausalLMRunner.from_model(model), ids, ...)``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mmcore.layers.kv_cache import KVCache
from mmcore_llama.components import DecoderLM, LMEmbedding, LMHead
from mmcore_llama.export import lm_parts


class CausalLMRunner:
    """Runs an mmcore LM's embedding -> trunk -> head with a :class:`KVCache`."""

    def __init__(self, embedding: LMEmbedding, trunk: DecoderLM, head: LMHead) -> None:
        self.embedding, self.trunk, self.head = embedding, trunk, head

    @classmethod
    def from_model(cls, model: Any) -> CausalLMRunner:
        """The runner of a built ``MultimodalModel`` whose fusion is a ``decoder-lm``."""
        return cls(*lm_parts(model))

    @property
    def eos_token_ids(self) -> list[int]:
        eos = self.embedding.cfg.eos_token_id
        return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)

    def _logits(self, ids: Tensor, mask: Tensor, cache: KVCache) -> Tensor:
        hidden = self.trunk.hidden(self.embedding.embed(ids), mask, cache)  # (B, T, D)
        return self.head.project(hidden[:, -1], self.embedding)  # (B, V)

    @torch.no_grad()
    def prefill(self, input_ids: Tensor, attention_mask: Tensor | None = None
                ) -> tuple[Tensor, KVCache]:
        """Prompts ``(B, T)`` (left-padded, ``attention_mask`` True for real tokens) ->
        (logits of the next token (B, V), the cache)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        cache = self.trunk.new_cache()
        return self._logits(input_ids, attention_mask.bool(), cache), cache

    @torch.no_grad()
    def step(self, next_ids: Tensor, attention_mask: Tensor | None, cache: KVCache
             ) -> tuple[Tensor, KVCache]:
        """The chosen tokens ``(B, 1)`` and the grown mask ``(B, S + 1)`` (only its last
        column is new; None: the tokens are real) -> (next logits (B, V), cache)."""
        mask = (torch.ones_like(next_ids, dtype=torch.bool) if attention_mask is None
                else attention_mask[:, -1:].bool())
        return self._logits(next_ids, mask, cache), cache

    def reorder_cache(self, cache: KVCache, beam_idx: Tensor) -> KVCache:
        """Keep the batch rows ``beam_idx: (B',)`` of the cache, in that order."""
        return cache.reorder(beam_idx)

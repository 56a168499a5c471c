"""Whisper's decoder as the generation loop sees it: :class:`WhisperRunner` implements
:class:`mmcore.generation.Decoder` over the audio tokens of B utterances.

``prefill`` takes the (left-padded) prompts of R = B * E rows (E: beams or samples per
utterance, rows of one utterance consecutive), builds the KV cache (cross-attention keys
and values once per utterance) and runs the prompts; ``step`` feeds one token per row;
``reorder_cache`` follows beam search. With ``no_speech`` set, ``prefill`` also records
each row's probability of that token right after ``<|startoftranscript|>`` (the raw
logits at the start token's position, as openai-whisper reads it) in ``no_speech_probs``.
``use_cache=False`` reruns the whole sequence at every step (the reference the cache is
tested against; unpadded prompts only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mmcore.contract import Tokens
from mmcore_whisper.decoder import KVCache, WhisperDecoder


@dataclass
class RunnerState:
    """The loop's opaque cache: the KV cache (None without caching), whether prompts are
    left-padded, and the sequences so far (R, T) when decoding without a cache."""

    kv: KVCache | None
    padded: bool
    ids: Tensor | None = None


def repeat_rows(context: Tokens, rows: int) -> Tokens:
    """Each of the B context items repeated ``rows // B`` times (consecutively)."""
    times = rows // context.x.shape[0]
    mask = None if context.mask is None else context.mask.repeat_interleave(times, dim=0)
    return Tokens(context.x.repeat_interleave(times, dim=0), mask)


class WhisperRunner:
    """The :class:`mmcore.generation.Decoder` of a Whisper decoder reading ``context``
    (B, Nc, Dc); ``max_new_tokens`` sizes the KV cache."""

    def __init__(self, head: WhisperDecoder, context: Tokens, *, max_new_tokens: int,
                 use_cache: bool = True, no_speech: int | None = None) -> None:
        self.head, self.context = head, context
        self.max_new_tokens, self.use_cache, self.no_speech = max_new_tokens, use_cache, no_speech
        self.no_speech_probs: Tensor | None = None

    def _rows(self, input_ids: Tensor) -> int:
        rows, batch = input_ids.shape[0], self.context.x.shape[0]
        if rows % batch:
            raise ValueError(f"{rows} prompt rows do not divide among {batch} utterances")
        return rows

    def prefill(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, RunnerState]:
        """Prompts (R, T), mask (R, T) -> last-position logits (R, V) and the state."""
        rows, padded = self._rows(input_ids), not bool(attention_mask.all())
        if not self.use_cache:
            if padded:
                raise ValueError("decoding without a cache takes unpadded prompts only")
            logits = self.head.decode(input_ids, repeat_rows(self.context, rows))  # (R, T, V)
            self._record_no_speech(input_ids, logits)
            return logits[:, -1].float(), RunnerState(None, False, input_ids)
        kv = self.head.start_cache(self.context, rows=rows,
                                   max_length=input_ids.shape[1] + self.max_new_tokens)
        positions, key_mask = self._positions(attention_mask) if padded else (None, None)
        hidden = self.head.step_hidden(input_ids, kv, positions=positions, key_mask=key_mask)
        if self.no_speech is not None:
            start = self._start_index(input_ids)
            at_start = hidden[torch.arange(rows), start].unsqueeze(1)  # (R, 1, D)
            self._record_no_speech(input_ids, kv.logits(at_start))
        return kv.logits(hidden[:, -1]).float(), RunnerState(kv, padded)

    def step(self, next_ids: Tensor, attention_mask: Tensor,
             state: RunnerState) -> tuple[Tensor, RunnerState]:
        """The chosen ids (R, 1) and the grown mask (R, T + n) -> next logits (R, V)."""
        if state.kv is None:
            assert state.ids is not None
            state.ids = torch.cat([state.ids, next_ids], dim=1)
            context = repeat_rows(self.context, state.ids.shape[0])
            return self.head.decode(state.ids, context)[:, -1].float(), state
        positions, key_mask = None, None
        if state.padded:
            positions, key_mask = self._positions(attention_mask)
            positions = positions[:, -1:]
        logits = self.head.step(next_ids, state.kv, positions=positions, key_mask=key_mask)
        return logits[:, -1].float(), state

    def reorder_cache(self, state: RunnerState, rows: Tensor) -> RunnerState:
        """Keep row ``rows[i]`` (R,) as row ``i`` (beam search)."""
        if state.kv is not None:
            state.kv.reorder(rows)
        if state.ids is not None:
            state.ids = state.ids[rows]
        return state

    def _positions(self, mask: Tensor) -> tuple[Tensor, Tensor]:
        """mask (R, L) -> each token's position among its row's real tokens (R, L), clamped
        to the decoder's positions (rows past their budget are discarded by the caller),
        and the key mask (R, L)."""
        positions = (mask.long().cumsum(dim=1) - 1).clamp(0, self.head.cfg.max_positions - 1)
        return positions, mask

    def _start_index(self, input_ids: Tensor) -> Tensor:
        """Each row's position of <|startoftranscript|> (R,); 0 where absent."""
        hits = input_ids == self.head.tokens.start
        return torch.where(hits.any(dim=1), hits.long().argmax(dim=1), 0)

    def _record_no_speech(self, input_ids: Tensor, logits: Tensor) -> None:
        """logits (R, T or 1, V) at the start token (or all positions) -> no-speech probs."""
        if self.no_speech is None:
            return
        if logits.shape[1] != 1:
            start = self._start_index(input_ids)
            logits = logits[torch.arange(logits.shape[0]), start].unsqueeze(1)
        self.no_speech_probs = logits[:, 0].float().softmax(dim=-1)[:, self.no_speech]

"""What the generation loop drives: the :class:`Decoder` protocol and the loop's output.

A decoder keeps its own cache (keys/values, cross-attention context, position counters);
the loop never looks inside it. It only asks for the logits of the next position:

- ``prefill(input_ids (R, T), attention_mask (R, T) bool) -> (logits (R, V), cache)``: run
  the prompt, return the logits of its last position. Prompts are left-padded; the
  mask is True on real tokens, and positions and attention masking are the decoder's job.
- ``step(next_ids (R, 1), attention_mask (R, T + 1) bool, cache) -> (logits (R, V), cache)``:
  feed the newly chosen tokens; the mask has grown by one True column.
- ``reorder_cache(cache, rows (R,)) -> cache``: beam search keeps row ``rows[i]`` as the new
  row ``i`` (rows are always re-indexed within the same number of rows).

Rows: with beam search or ``num_return_sequences``, each prompt is repeated ``E`` times
(``repeat_interleave``: rows ``i * E .. i * E + E - 1`` belong to prompt ``i``), so R = B * E;
a decoder holding per-prompt context (Whisper's audio, LLaVA's image tokens) repeats it
by ``R // B`` in ``prefill``. Logits may be of any float dtype; the loop scores in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class Decoder(Protocol):
    """A model the generation loop can drive (see the module docstring)."""

    def prefill(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Any]:
        """Prompt ids (R, T) and mask (R, T) -> last-position logits (R, V) and a cache."""
        ...

    def step(self, next_ids: Tensor, attention_mask: Tensor, cache: Any) -> tuple[Tensor, Any]:
        """New ids (R, 1), the grown mask (R, T + 1) -> their logits (R, V) and the cache."""
        ...

    def reorder_cache(self, cache: Any, rows: Tensor) -> Any:
        """Keep cache row ``rows[i]`` (R,) as row ``i``."""
        ...


@dataclass
class GenerationOutput:
    """What :func:`mmcore.generation.generate` returns.

    ``sequences (B * num_return_sequences, T + n)``: prompt (as given, padding included)
    then the generated tokens; rows that stopped early are filled with ``pad_token_id``.
    ``prompt_length``: T. ``finished (B * num_return_sequences,)``: whether a row met a stop
    token or stop string (rather than running out of ``max_new_tokens``).
    ``sequence_scores``: beam search only, each returned hypothesis's length-penalised
    score. ``logits``: with ``output_logits`` (greedy and sampling), the raw next-token
    logits of every step, (B, n, V) float32. ``token_logprobs``: with
    ``output_token_logprobs`` (greedy and sampling), each chosen token's log-probability
    (B, n) float32 (see :class:`~mmcore.generation.GenerationConfig`).
    """

    sequences: Tensor
    prompt_length: int
    finished: Tensor
    sequence_scores: Tensor | None = None
    logits: Tensor | None = None
    token_logprobs: Tensor | None = None

    @property
    def new_tokens(self) -> Tensor:
        """The generated part of ``sequences``. (B * num_return_sequences, n)"""
        return self.sequences[:, self.prompt_length :]

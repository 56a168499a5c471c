"""openai-whisper's decoding policy around each window (its ``transcribe.py``).

- **Temperature fallback**: decode at the first temperature; a window "fails" when its
  text's compression ratio is above ``compression_ratio_threshold`` (too repetitive) or
  its average log-probability is below ``logprob_threshold``, unless its no-speech
  probability is above ``no_speech_threshold`` (silence); a failed window is decoded again
  at the next temperature, and the last attempt is kept when every one fails. At 0 the
  search is greedy or beam search, above it ``best_of`` samples.
- **No speech**: a window whose no-speech probability is above ``no_speech_threshold`` is
  skipped (no segment, ``seek`` moves over it) unless its average log-probability is
  above ``logprob_threshold``.
- **Conditioning**: with ``condition_on_previous_text`` the tokens of earlier segments
  (and the initial prompt, first) are given as ``<|startofprev|> tokens`` before the task
  prompt, at most ``max_positions // 2 - 1`` of them; the history restarts after a window
  decoded above temperature 0.5, or after every window without conditioning (the initial
  prompt then only prompts the first window).

openai-whisper's defaults are :data:`OPENAI_DEFAULTS`. Windows are decoded as a batch;
each window falls back on its own (only the failed ones are decoded again).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mmcore.contract import Tokens
from mmcore_whisper.decoder import WhisperDecoder
from mmcore_whisper.decoding import Search, WindowResult, decode_windows

#: openai-whisper's ``transcribe`` defaults
OPENAI_DEFAULTS = {"temperatures": (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
                   "compression_ratio_threshold": 2.4, "logprob_threshold": -1.0,
                   "no_speech_threshold": 0.6, "condition_on_previous_text": True,
                   "best_of": 5}
#: above this temperature the next window is not conditioned on this one's text
RESET_TEMPERATURE = 0.5

Text = Callable[[list[int]], str]


@dataclass(frozen=True)
class Thresholds:
    """When a window fails (None: that test is off)."""

    compression_ratio: float | None = None
    logprob: float | None = None
    no_speech: float | None = None


def compression_ratio(text: str) -> float:
    """UTF-8 bytes over zlib-compressed bytes, as openai-whisper measures repetition."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data))


def needs_fallback(result: WindowResult, thresholds: Thresholds) -> bool:
    """Whether to decode the window again at the next temperature."""
    fails = False
    if (thresholds.compression_ratio is not None and result.compression_ratio is not None
            and result.compression_ratio > thresholds.compression_ratio):
        fails = True  # too repetitive
    if thresholds.logprob is not None and result.avg_logprob < thresholds.logprob:
        fails = True  # too unlikely
    if (thresholds.no_speech is not None and result.no_speech_prob is not None
            and result.no_speech_prob > thresholds.no_speech):
        fails = False  # silence: nothing better to find
    return fails


def is_silence(result: WindowResult, thresholds: Thresholds) -> bool:
    """Whether to skip the window as silence."""
    if thresholds.no_speech is None or result.no_speech_prob is None:
        return False
    if thresholds.logprob is not None and result.avg_logprob > thresholds.logprob:
        return False  # likely enough text despite the no-speech probability
    return result.no_speech_prob > thresholds.no_speech


def decode_with_fallback(head: WhisperDecoder, context: Tokens, prompts: list[list[int]],
                         budgets: list[int], *, searches: list[Search],
                         thresholds: Thresholds, text: Text | None) -> list[WindowResult]:
    """B windows (context (B, Nc, D)), each decoded with ``searches`` in turn until it
    passes ``thresholds``; -> one result per window (its last attempt)."""
    if thresholds.compression_ratio is not None and text is None:
        raise ValueError("the compression-ratio threshold needs a tokenizer (ids -> text)")
    results: list[WindowResult | None] = [None] * len(prompts)
    todo = list(range(len(prompts)))
    for search in searches:
        index = torch.tensor(todo, device=context.x.device)
        part = Tokens(context.x[index], None if context.mask is None else context.mask[index])
        attempts = decode_windows(head, part, [prompts[i] for i in todo],
                                  [budgets[i] for i in todo], search)
        for i, result in zip(todo, attempts, strict=True):
            if text is not None:
                result.compression_ratio = compression_ratio(text(result.tokens).strip())
            results[i] = result
        todo = [i for i, r in zip(todo, attempts, strict=True) if needs_fallback(r, thresholds)]
        if not todo:
            break
    return [r for r in results if r is not None]


def previous_prompt(history: list[int], previous: int | None, max_positions: int) -> list[int]:
    """``<|startofprev|>`` and the last ``max_positions // 2 - 1`` history tokens (empty
    without history)."""
    if not history:
        return []
    if previous is None:
        raise ValueError("this model names no <|startofprev|> token; it cannot be prompted "
                         "with earlier text")
    return [previous, *history[-(max_positions // 2 - 1) :]]

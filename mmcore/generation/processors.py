"""Logit processors: small callables ``processor(input_ids (R, T), scores (R, V)) -> scores``.

``input_ids`` is every row's whole sequence so far (prompt included); ``scores`` are the
next-token logits (greedy, sampling) or log-probabilities (beam search), float32. A
processor returns new scores and never changes its inputs in place. They run in order;
:func:`build_processors` assembles the built-in ones from a :class:`GenerationConfig` in
transformers' order (penalties and constraints, then the caller's processors, then the
sampling warpers temperature, top-k, top-p). Model rules (Whisper's timestamps, for
instance) are processors of the same shape passed to ``generate(processors=[...])``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from mmcore.generation.config import GenerationConfig

Processor = Callable[[Tensor, Tensor], Tensor]
NEG_INF = float("-inf")


def _vocab_mask(ids: Sequence[int], scores: Tensor) -> Tensor:
    """(V,) bool, True at ``ids`` (ids outside the vocabulary are ignored)."""
    mask = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
    keep = [i for i in ids if 0 <= i < scores.shape[-1]]
    if keep:
        mask[keep] = True
    return mask


class Temperature:
    """scores / temperature."""

    def __init__(self, temperature: float) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        return scores / self.temperature


class TopK:
    """Keep the ``k`` best scores (ties with the k-th kept), the rest -inf."""

    def __init__(self, k: int, min_keep: int = 1) -> None:
        if k < 1:
            raise ValueError(f"top_k must be >= 1, got {k}")
        self.k = max(k, min_keep)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        k = min(self.k, scores.shape[-1])
        kth = torch.topk(scores, k).values[..., -1:]  # (R, 1)
        return scores.masked_fill(scores < kth, NEG_INF)


class TopP:
    """Nucleus filtering: keep the best tokens whose cumulative probability reaches ``p``
    (transformers' rule: drop the worst tokens whose cumulative mass is <= 1 - p)."""

    def __init__(self, p: float, min_keep: int = 1) -> None:
        if not 0 < p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {p}")
        self.p, self.min_keep = p, min_keep

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        ordered, order = torch.sort(scores, descending=False)  # (R, V) worst first
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= (1 - self.p)
        drop[..., -self.min_keep :] = False
        return scores.masked_fill(drop.scatter(1, order, drop), NEG_INF)


class RepetitionPenalty:
    """transformers' repetition penalty: each token present in a row's sequence has its
    score divided by ``penalty`` when positive, multiplied when negative.

    ``prompt_mask (R, T0)``: False marks prompt padding, which does not count (as
    transformers ignores left padding given an attention mask)."""

    def __init__(self, penalty: float, prompt_mask: Tensor | None = None) -> None:
        if penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {penalty}")
        self.penalty, self.prompt_mask = penalty, prompt_mask

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        vocab = scores.shape[-1]
        ids = input_ids.clamp(max=vocab)  # ids beyond the vocabulary land in a spare column
        if self.prompt_mask is not None:
            t0 = self.prompt_mask.shape[1]
            ignore = ~self.prompt_mask.to(ids.device)
            ids = torch.cat([ids[:, :t0].masked_fill(ignore, vocab), ids[:, t0:]], dim=1)
        padded = torch.nn.functional.pad(scores, (0, 1))  # (R, V + 1)
        seen = padded.gather(1, ids)
        seen = torch.where(seen < 0, seen * self.penalty, seen / self.penalty)
        return padded.scatter(1, ids, seen)[:, :vocab]


class SuppressTokens:
    """``ids`` are never generated."""

    def __init__(self, ids: Sequence[int]) -> None:
        self.ids = list(ids)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        return scores.masked_fill(_vocab_mask(self.ids, scores), NEG_INF)


class SuppressAtBegin:
    """``ids`` are not generated as the first new token (sequence length ``begin``)."""

    def __init__(self, ids: Sequence[int], begin: int) -> None:
        self.ids, self.begin = list(ids), begin

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if input_ids.shape[1] != self.begin:
            return scores
        return scores.masked_fill(_vocab_mask(self.ids, scores), NEG_INF)


class MinNewTokens:
    """Stop tokens are forbidden until ``min_new`` tokens follow the prompt (length
    ``prompt_length``)."""

    def __init__(self, min_new: int, eos_ids: Sequence[int], prompt_length: int) -> None:
        self.min_new, self.eos_ids, self.prompt_length = min_new, list(eos_ids), prompt_length

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if input_ids.shape[1] - self.prompt_length >= self.min_new:
            return scores
        return scores.masked_fill(_vocab_mask(self.eos_ids, scores), NEG_INF)


class ForceTokens:
    """``{i: token}``: the i-th new token (0-based, after ``prompt_length``) is ``token``:
    every other score becomes -inf and the forced one 0."""

    def __init__(self, forced: dict[int, int], prompt_length: int) -> None:
        self.forced, self.prompt_length = dict(forced), prompt_length

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        token = self.forced.get(input_ids.shape[1] - self.prompt_length)
        if token is None:
            return scores
        out = torch.full_like(scores, NEG_INF)
        out[:, token] = 0.0
        return out


def apply(processors: Sequence[Processor], input_ids: Tensor, scores: Tensor) -> Tensor:
    """Run ``processors`` in order. scores (R, V) -> (R, V)"""
    for processor in processors:
        scores = processor(input_ids, scores)
    return scores


def build_processors(config: GenerationConfig, *, prompt_length: int,
                     prompt_mask: Tensor | None = None,
                     extra: Sequence[Processor] = ()) -> list[Processor]:
    """The processors ``config`` asks for, in transformers' order, with ``extra`` (the
    caller's, e.g. a model's rules) after the constraints and before the sampling warpers.

    ``prompt_mask (R, T)`` bool: the prompt's padding (for the repetition penalty)."""
    return [*build_constraints(config, prompt_length=prompt_length, prompt_mask=prompt_mask),
            *extra, *build_warpers(config)]


def build_constraints(config: GenerationConfig, *, prompt_length: int,
                      prompt_mask: Tensor | None = None) -> list[Processor]:
    """The penalties and constraints ``config`` asks for (not the sampling warpers)."""
    out: list[Processor] = []
    if config.repetition_penalty != 1.0:
        out.append(RepetitionPenalty(config.repetition_penalty, prompt_mask))
    if config.min_new_tokens > 0 and config.eos_ids:
        out.append(MinNewTokens(config.min_new_tokens, config.eos_ids, prompt_length))
    if config.suppress_tokens:
        out.append(SuppressTokens(config.suppress_tokens))
    if config.begin_suppress_tokens:
        out.append(SuppressAtBegin(config.begin_suppress_tokens, prompt_length))
    if config.forced_tokens:
        out.append(ForceTokens(config.forced_tokens, prompt_length))
    return out


def build_warpers(config: GenerationConfig) -> list[Processor]:
    """The sampling warpers (temperature, top-k, top-p); none unless ``do_sample``."""
    out: list[Processor] = []
    if config.do_sample:
        # beam sampling keeps one more token than there are stop tokens (transformers)
        min_keep = max(len(config.eos_ids) + 1, 2) if config.num_beams > 1 else 1
        if config.temperature != 1.0:
            out.append(Temperature(config.temperature))
        if config.top_k is not None:
            out.append(TopK(config.top_k, min_keep))
        if config.top_p < 1.0:
            out.append(TopP(config.top_p, min_keep))
    return out

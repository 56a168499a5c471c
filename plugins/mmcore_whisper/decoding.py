"""Whisper decoding of 30 s windows through the one generation loop (:mod:`mmcore.generation`):
the logit rules (a processor), greedy search, sampling and beam search of a batch of
windows, and language detection.

The rules, applied in this order to each step's scores (logits for greedy search and
sampling, log-probabilities for beam search), are those of Hugging Face's Whisper
``generate``:

1. ``begin_suppress`` tokens are forbidden as the first generated token;
2. ``suppress`` tokens are always forbidden;
3. with timestamps: ``<|notimestamps|>`` is forbidden; timestamps come in pairs (after a
   single timestamp only another timestamp or EOS may follow; after a pair, text); they
   never decrease (and a pair's second timestamp may not repeat an earlier pair's);
   the first token is a timestamp no later than ``max_initial_timestamp_index``; and when
   the probability mass of all timestamps beats every single text token, a timestamp
   must be chosen.

Beam search is the loop's, which is Hugging Face's (``length_penalty`` 1.0: a finished
hypothesis scores its summed log-probability divided by its generated length, EOS
included; it stops when no running beam can beat the worst of ``beam_size`` finished ones
at the current length). openai-whisper's own beam search (patience, ranking by
``sum / length``) differs; the token-exactness tests pin transformers' behaviour.

Log-probabilities (for the fallback's average log-probability): greedy search and
sampling sum each chosen token's log-softmax of the rule-processed logits (before the
temperature), EOS included, as openai-whisper does; beam search's come from the winning
hypothesis's score (the rules mask without renormalising, as transformers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mmcore.contract import Tokens
from mmcore.generation import GenerationConfig, GenerationOutput, generate
from mmcore_whisper.decoder import WhisperDecoder
from mmcore_whisper.runner import WhisperRunner
from mmcore_whisper.tokens import WhisperTokens

NEG_INF = float("-inf")


@dataclass(frozen=True)
class TimestampRule:
    """Ids the timestamp rules need."""

    begin: int  # <|0.00|>
    no_timestamps: int
    eos: int
    max_initial_index: int | None


class LogitRules:
    """Suppression and timestamp rules for sequences whose generated part starts at
    ``begin_index`` (the prompt length); a logit processor of :mod:`mmcore.generation`."""

    def __init__(self, tokens: WhisperTokens, vocab_size: int, begin_index: int,
                 timestamps: bool) -> None:
        self.begin_index = begin_index
        self.suppress = _mask(tokens.suppress, vocab_size)  # (V,) True = forbidden
        self.begin_suppress = _mask(tokens.begin_suppress, vocab_size)
        self.timestamp: TimestampRule | None = None
        if timestamps:
            if tokens.no_timestamps is None:
                raise ValueError("this model has no timestamp tokens (no <|notimestamps|>)")
            self.timestamp = TimestampRule(tokens.no_timestamps + 1, tokens.no_timestamps,
                                           tokens.eos, tokens.max_initial_timestamp_index)

    def __call__(self, generated: Tensor | list[list[int]], scores: Tensor) -> Tensor:
        """``generated``: the whole sequences (R, T) as the generation loop passes them, or
        each row's tokens after the prompt as lists; scores (R, V) -> new scores."""
        if isinstance(generated, Tensor):
            generated = generated[:, self.begin_index :].tolist()
        if self.suppress.device != scores.device:
            self.suppress = self.suppress.to(scores.device)
            self.begin_suppress = self.begin_suppress.to(scores.device)
        if not generated[0]:
            scores = scores.masked_fill(self.begin_suppress, NEG_INF)
        scores = scores.masked_fill(self.suppress, NEG_INF)
        if self.timestamp is not None:
            scores = self._timestamps(generated, scores, self.timestamp)
        return scores

    @staticmethod
    def _timestamps(generated: list[list[int]], scores: Tensor, rule: TimestampRule) -> Tensor:
        scores = scores.clone()
        scores[:, rule.no_timestamps] = NEG_INF
        for row, seq in enumerate(generated):
            _pair_rules(seq, scores[row], rule)
        if not generated[0]:  # the first token is a timestamp, not too late
            scores[:, : rule.begin] = NEG_INF
            if rule.max_initial_index is not None:
                scores[:, rule.begin + rule.max_initial_index + 1 :] = NEG_INF
        logprobs = torch.log_softmax(scores.float(), dim=-1)
        timestamp_mass = logprobs[:, rule.begin :].logsumexp(dim=-1)  # (R,)
        best_text = logprobs[:, : rule.begin].max(dim=-1).values
        force = (timestamp_mass > best_text)[:, None]
        scores[:, : rule.begin].masked_fill_(force, NEG_INF)
        return scores


def _pair_rules(seq: list[int], scores: Tensor, rule: TimestampRule) -> None:
    """Timestamps in pairs and never decreasing, for one row's scores (V,), in place."""
    begin = rule.begin
    last = len(seq) >= 1 and seq[-1] >= begin
    penultimate = len(seq) < 2 or seq[-2] >= begin
    if last:
        if penultimate:  # a pair just closed: text (or EOS) next
            scores[begin:] = NEG_INF
        else:  # a single timestamp: another one, or EOS
            scores[: rule.eos] = NEG_INF
    stamps = [t for t in seq if t >= begin]
    if stamps:
        lowest = stamps[-1] if last and not penultimate else stamps[-1] + 1
        scores[begin:lowest] = NEG_INF


def _mask(ids: list[int], vocab_size: int) -> Tensor:
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    mask[[i for i in ids if 0 <= i < vocab_size]] = True
    return mask


class AllowOnly:
    """A processor that forbids every token but ``ids``."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        keep = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
        keep[self.ids] = True
        return scores.masked_fill(~keep, NEG_INF)


# -- searching a batch of windows -----------------------------------------------------------


@dataclass(frozen=True)
class Search:
    """How to search a batch of windows: greedy (``temperature`` 0, ``beam_size`` 1), beam
    search (``temperature`` 0), or sampling at ``temperature`` > 0 keeping the best of
    ``best_of`` samples (openai-whisper's ranking: summed log-probability / text tokens)."""

    beam_size: int = 1
    temperature: float = 0.0
    best_of: int = 1
    length_penalty: float = 1.0
    timestamps: bool = False
    use_cache: bool = True
    seed: int | None = None

    @property
    def sampling(self) -> bool:
        return self.temperature > 0


@dataclass
class WindowResult:
    """One window's decode: generated tokens (EOS removed), the summed log-probability
    (EOS included), ``avg_logprob`` = sum / (tokens + 1) as openai-whisper, the
    no-speech probability (None when the model has no such token) and the temperature."""

    tokens: list[int]
    sum_logprob: float
    avg_logprob: float
    no_speech_prob: float | None
    temperature: float
    compression_ratio: float | None = None


def left_pad(prompts: list[list[int]], pad: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Prompts of any lengths -> ids (R, T) left-padded with ``pad`` and mask (R, T) bool."""
    length = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), length), pad, dtype=torch.long, device=device)
    mask = torch.zeros(len(prompts), length, dtype=torch.bool, device=device)
    for row, prompt in enumerate(prompts):
        ids[row, length - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, length - len(prompt) :] = True
    return ids, mask


def _config(search: Search, eos: int, max_new_tokens: int) -> GenerationConfig:
    if search.sampling:
        return GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=eos,
                                pad_token_id=eos, do_sample=True,
                                temperature=search.temperature,
                                num_return_sequences=search.best_of, seed=search.seed,
                                output_token_logprobs=True)
    return GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=eos,
                            num_beams=search.beam_size, length_penalty=search.length_penalty,
                            output_token_logprobs=search.beam_size == 1)


def decode_windows(head: WhisperDecoder, context: Tokens, prompts: list[list[int]],
                   budgets: list[int], search: Search) -> list[WindowResult]:
    """Decode B windows (audio tokens ``context`` (B, Nc, D), one prompt and one budget of
    new tokens each) in one call of the generation loop; -> one result per window.

    Rows with smaller budgets are cut to them (greedy search and sampling decide each row
    from its own tokens only); beam search, whose stopping depends on the budget, decodes
    the rows of each budget together."""
    if not search.sampling and search.beam_size > 1 and len(set(budgets)) > 1:
        return _by_budget(head, context, prompts, budgets, search)
    eos = head.tokens.eos
    ids, mask = left_pad(prompts, eos, context.x.device)
    rules = LogitRules(head.tokens, head.cfg.vocab_size, ids.shape[1], search.timestamps)
    runner = WhisperRunner(head, context, max_new_tokens=max(budgets),
                           use_cache=search.use_cache, no_speech=head.tokens.no_speech)
    out = generate(runner, ids, attention_mask=mask, config=_config(search, eos, max(budgets)),
                   processors=[rules])
    rows = out.new_tokens.shape[0] // len(prompts)  # beams keep one row per window
    probs = runner.no_speech_probs  # (B * E,): E rows per window in the prefill
    results = []
    for i, budget in enumerate(budgets):
        no_speech = None if probs is None else float(probs[i * (len(probs) // len(prompts))])
        if search.beam_size > 1 and not search.sampling:
            results.append(_beam_result(out, i, eos, search, no_speech))
        else:
            results.append(_best_sample(out, range(i * rows, (i + 1) * rows), budget, eos,
                                        search.temperature, no_speech))
    return results


def _by_budget(head: WhisperDecoder, context: Tokens, prompts: list[list[int]],
               budgets: list[int], search: Search) -> list[WindowResult]:
    results: list[WindowResult | None] = [None] * len(prompts)
    for budget in sorted(set(budgets)):
        rows = [i for i, b in enumerate(budgets) if b == budget]
        index = torch.tensor(rows, device=context.x.device)
        part = Tokens(context.x[index], None if context.mask is None else context.mask[index])
        for row, result in zip(rows, decode_windows(head, part, [prompts[i] for i in rows],
                                                    [budget] * len(rows), search), strict=True):
            results[row] = result
    return [r for r in results if r is not None]


def _until_eos(tokens: list[int], eos: int) -> list[int]:
    """Tokens up to and including the first EOS."""
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def _best_sample(out: GenerationOutput, rows: range, budget: int, eos: int,
                 temperature: float, no_speech: float | None) -> WindowResult:
    """The best of a window's rows (greedy: its only row) by summed log-probability per
    text token (openai-whisper's MaximumLikelihoodRanker without length penalty)."""
    assert out.token_logprobs is not None
    best: tuple[float, list[int], float] | None = None
    for row in rows:
        tokens = _until_eos(out.new_tokens[row, :budget].tolist(), eos)
        total = float(out.token_logprobs[row, : len(tokens)].sum())
        text = tokens[:-1] if tokens and tokens[-1] == eos else tokens
        score = total / max(len(text), 1)
        if best is None or score > best[0]:
            best = (score, text, total)
    assert best is not None
    _, text, total = best
    return WindowResult(text, total, total / (len(text) + 1), no_speech, temperature)


def _beam_result(out: GenerationOutput, row: int, eos: int, search: Search,
                 no_speech: float | None) -> WindowResult:
    """The winning hypothesis; its summed log-probability from its length-penalised score."""
    assert out.sequence_scores is not None
    tokens = _until_eos(out.new_tokens[row].tolist(), eos)
    total = float(out.sequence_scores[row]) * len(tokens) ** search.length_penalty
    text = tokens[:-1] if tokens and tokens[-1] == eos else tokens
    return WindowResult(text, total, total / (len(text) + 1), no_speech, 0.0)


# -- greedy search of one prompt, and language detection -------------------------------------


def greedy(decoder: WhisperDecoder, context: Tokens, prompt: list[int], rules: LogitRules,
           max_new_tokens: int, *, use_cache: bool = True) -> list[list[int]]:
    """Each context item's greedy tokens through the generation loop (EOS, when reached, is
    the last). ``use_cache=False`` reruns the whole sequence at every step."""
    eos = decoder.tokens.eos
    ids = torch.tensor([prompt] * context.x.shape[0], dtype=torch.long, device=context.x.device)
    runner = WhisperRunner(decoder, context, max_new_tokens=max_new_tokens, use_cache=use_cache)
    config = GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=eos)
    out = generate(runner, ids, config=config, processors=[rules])
    return [_until_eos(row, eos) for row in out.new_tokens.tolist()]


def detect_language(decoder: WhisperDecoder, context: Tokens) -> list[int]:
    """Per context item, the language token most likely after <|startoftranscript|>."""
    languages = sorted(decoder.tokens.languages.values())
    if not languages:
        raise ValueError("this is an English-only Whisper model: it detects no language")
    ids = torch.full((context.x.shape[0], 1), decoder.tokens.start, dtype=torch.long,
                     device=context.x.device)
    runner = WhisperRunner(decoder, context, max_new_tokens=1)
    out = generate(runner, ids, config=GenerationConfig(max_new_tokens=1),
                   processors=[AllowOnly(languages)])
    return out.new_tokens[:, 0].tolist()

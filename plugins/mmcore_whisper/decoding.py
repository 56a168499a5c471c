"""Whisper decoding over one 30 s window: the logit rules, greedy search and beam search.

The rules, applied in this order to each step's scores (logits for greedy search,
log-probabilities for beam search), are those of Hugging Face's Whisper ``generate``:

1. ``begin_suppress`` tokens are forbidden as the first generated token;
2. ``suppress`` tokens are always forbidden;
3. with timestamps: ``<|notimestamps|>`` is forbidden; timestamps come in pairs (after a
   single timestamp only another timestamp or EOS may follow; after a pair, text); they
   never decrease (and a pair's second timestamp may not repeat an earlier pair's);
   the first token is a timestamp no later than ``max_initial_timestamp_index``; and when
   the probability mass of all timestamps beats every single text token, a timestamp
   must be chosen.

Beam search follows Hugging Face's (``length_penalty`` 1.0: a finished hypothesis scores
its summed log-probability divided by its generated length; it stops when no running
beam can beat the worst of ``beam_size`` finished ones at the current length).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mmcore.contract import Tokens
from mmcore_whisper.decoder import KVCache, WhisperDecoder
from mmcore_whisper.tokens import WhisperTokens

NEG_INF = float("-inf")
#: Hugging Face's "very unlikely" score for beams that must not be chosen
_MASKED = -1.0e9


@dataclass(frozen=True)
class TimestampRule:
    """Ids the timestamp rules need."""

    begin: int  # <|0.00|>
    no_timestamps: int
    eos: int
    max_initial_index: int | None


class LogitRules:
    """Suppression and timestamp rules for sequences whose generated part starts at
    ``begin_index`` (the prompt length)."""

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

    def __call__(self, generated: list[list[int]], scores: Tensor) -> Tensor:
        """``generated``: each row's tokens after the prompt; scores (R, V) -> new scores."""
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


# -- greedy search ------------------------------------------------------------------------


def greedy(decoder: WhisperDecoder, context: Tokens, prompt: list[int], rules: LogitRules,
           max_new_tokens: int, *, use_cache: bool = True) -> list[list[int]]:
    """Each context item's generated tokens (EOS, when reached, is the last). Rows that
    finish early stop growing (Hugging Face pads them; here they are simply shorter)."""
    rows, eos = context.x.shape[0], decoder.tokens.eos
    ids = torch.tensor([prompt] * rows, dtype=torch.long, device=context.x.device)  # (R, P)
    cache = None
    if use_cache:
        cache = decoder.start_cache(context, max_length=len(prompt) + max_new_tokens)
    generated: list[list[int]] = [[] for _ in range(rows)]
    done = [False] * rows
    step_ids = ids  # the cache takes only new ids; without it the whole sequence reruns
    for _ in range(max_new_tokens):
        scores = _next_scores(decoder, step_ids, ids, context, cache)  # (R, V) float32
        chosen = rules(generated, scores).argmax(dim=-1)  # (R,)
        for row, token in enumerate(chosen.tolist()):
            if not done[row]:
                generated[row].append(token)
                done[row] = token == eos
        if all(done):
            break
        step_ids = chosen[:, None]
        if cache is None:
            ids = torch.cat([ids, step_ids], dim=1)
    return generated


def _next_scores(decoder: WhisperDecoder, step_ids: Tensor, ids: Tensor, context: Tokens,
                 cache: KVCache | None) -> Tensor:
    """Next-token logits (R, V) in float32: the cache takes only the new ids; without a
    cache the whole sequence is run again (the reference the cache is tested against)."""
    if cache is None:
        return decoder.decode(ids, context)[:, -1].float()
    return decoder.step(step_ids, cache)[:, -1].float()


# -- beam search --------------------------------------------------------------------------


@dataclass
class _Beams:
    """Running and finished hypotheses of one utterance, Hugging Face's layout."""

    running: Tensor  # (K, L_max) ids
    running_scores: Tensor  # (K,) summed log-probabilities
    finished: Tensor  # (K, L_max)
    finished_scores: Tensor  # (K,) length-penalised
    finished_lengths: Tensor  # (K,)
    is_finished: Tensor  # (K,) bool
    improvable: bool = True


def _start_beams(prompt: list[int], beams: int, max_length: int, eos: int,
                 device: torch.device) -> _Beams:
    running = torch.full((beams, max_length), eos, dtype=torch.long, device=device)
    running[:, : len(prompt)] = torch.tensor(prompt, device=device)
    scores = torch.zeros(beams, device=device)
    scores[1:] = _MASKED  # only the first beam's continuations count at the first step
    return _Beams(running, scores, running.clone(), torch.full((beams,), _MASKED, device=device),
                  torch.full((beams,), len(prompt), device=device),
                  torch.zeros(beams, dtype=torch.bool, device=device))


def beam_search(decoder: WhisperDecoder, context: Tokens, prompt: list[int], rules: LogitRules,
                max_new_tokens: int, *, beams: int, length_penalty: float = 1.0) -> list[int]:
    """The best hypothesis's generated tokens for one utterance (context batch of 1)."""
    if context.x.shape[0] != 1:
        raise ValueError("beam search decodes one utterance at a time")
    eos, p = decoder.tokens.eos, len(prompt)
    max_length = p + max_new_tokens
    state = _start_beams(prompt, beams, max_length, eos, context.x.device)
    cache = decoder.start_cache(context, rows=beams, max_length=max_length)
    logits = decoder.step(state.running[:, :p], cache)[:, -1].float()  # (K, V)
    for cur_len in range(p, max_length):
        generated = [row[p:] for row in state.running[:, :cur_len].tolist()]
        logprobs = rules(generated, torch.log_softmax(logits, dim=-1))
        parents, hit_all = _beam_step(state, logprobs, cur_len, p, max_length, eos,
                                      length_penalty)
        if not state.improvable or hit_all:
            break
        cache.reorder(parents)
        logits = decoder.step(state.running[:, cur_len : cur_len + 1], cache)[:, -1].float()
    length = int(state.finished_lengths[0])
    return state.finished[0, p:length].tolist()


def _beam_step(state: _Beams, logprobs: Tensor, cur_len: int, p: int, max_length: int,
               eos: int, length_penalty: float) -> tuple[Tensor, bool]:
    """One step of Hugging Face's beam search on ``state``, in place. -> (parent beam of
    each new running beam (K,), whether every candidate finished)."""
    k, vocab = logprobs.shape
    total = (logprobs + state.running_scores[:, None]).reshape(-1)  # (K * V,)
    top_scores, top_index = torch.topk(total, 2 * k)
    parent = top_index // vocab
    candidates = state.running[parent].clone()  # (2K, L_max)
    candidates[:, cur_len] = top_index % vocab
    hits = (candidates[:, cur_len] == eos) | (cur_len + 1 >= max_length)  # (2K,)
    alive_scores = top_scores + hits.float() * _MASKED
    keep = torch.topk(alive_scores, k).indices
    state.running, state.running_scores = candidates[keep], alive_scores[keep]
    _finish(state, candidates, top_scores, hits, cur_len, p, length_penalty)
    best_possible = state.running_scores[0] / ((cur_len + 1 - p) ** length_penalty)
    worst = torch.where(state.is_finished, state.finished_scores.min(), _MASKED)
    state.improvable = state.improvable and bool((best_possible > worst).any())
    return parent[keep], bool(hits.all())


def _finish(state: _Beams, candidates: Tensor, top_scores: Tensor, hits: Tensor,
            cur_len: int, p: int, length_penalty: float) -> None:
    """Merge the candidates that just finished (among the top K) into the finished set."""
    k = state.finished.shape[0]
    just = hits.clone()
    just[k:] = False
    scores = top_scores / ((cur_len + 1 - p) ** length_penalty)
    scores = scores + float(not state.improvable) * _MASKED
    scores = scores + (~just).float() * _MASKED
    merged_scores = torch.cat([state.finished_scores, scores])
    best = torch.topk(merged_scores, k).indices
    lengths = torch.full_like(scores, cur_len + 1)
    state.finished = torch.cat([state.finished, candidates])[best]
    state.finished_scores = merged_scores[best]
    state.finished_lengths = torch.cat([state.finished_lengths, lengths])[best]
    state.is_finished = torch.cat([state.is_finished, just])[best]


# -- language detection -------------------------------------------------------------------


def detect_language(decoder: WhisperDecoder, context: Tokens) -> list[int]:
    """Per context item, the language token most likely after <|startoftranscript|>."""
    languages = decoder.tokens.languages
    if not languages:
        raise ValueError("this is an English-only Whisper model: it detects no language")
    ids = torch.full((context.x.shape[0], 1), decoder.tokens.start, dtype=torch.long,
                     device=context.x.device)
    logits = decoder.decode(ids, context)[:, -1]  # (B, V)
    allowed = torch.tensor(sorted(languages.values()), device=logits.device)
    return allowed[logits[:, allowed].argmax(dim=-1)].tolist()

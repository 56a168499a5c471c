"""Beam search (and beam sampling), transformers' ``GenerationMixin._beam_search`` of
version 5.x (checked token for token against 5.24).

Per prompt, ``num_beams`` running hypotheses and ``num_beams`` finished ones. Each step
takes the top ``max(2, 1 + number of stop tokens) * num_beams`` continuations of the
summed log-probabilities (processors see log-probabilities here); those that hit a stop
token, a stop string or the length limit become candidates for the finished set with the
score ``sum_logprobs / generated_length ** length_penalty`` (the generated length counts
the new tokens only, not the prompt); the best unfinished ones run on. ``early_stopping``:
False stops once no running beam can beat the worst finished one at the current length
(transformers' heuristic); True stops as soon as ``num_beams`` hypotheses are finished;
"never" bounds the running score at the longest length when ``length_penalty > 0``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mmcore.generation.config import GenerationConfig
from mmcore.generation.processors import apply
from mmcore.generation.protocol import Decoder, GenerationOutput
from mmcore.generation.run import Run

#: transformers' score for hypotheses that must not be chosen
_MASKED = -1.0e9


@dataclass
class Beams:
    """Per prompt (B) and beam (K): running and finished hypotheses, ids (B, K, L_max)."""

    running: Tensor
    running_scores: Tensor  # (B, K) summed log-probabilities
    finished: Tensor
    finished_scores: Tensor  # (B, K) length-penalised
    finished_lengths: Tensor  # (B, K) generated tokens
    is_finished: Tensor  # (B, K) bool
    improvable: Tensor  # (B, 1) bool


def _gather(t: Tensor, index: Tensor) -> Tensor:
    """t (B, N, ...) indexed along dim 1 by index (B, M) -> (B, M, ...)."""
    while index.dim() < t.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(t, index, dim=1)


def _start(run: Run, batch: int, beams: int, max_length: int, fill: int) -> Beams:
    t = run.prompt_length
    device = run.ids.device
    running = torch.full((batch, beams, max_length), fill, dtype=torch.long, device=device)
    running[:, :, :t] = run.ids.view(batch, beams, t)
    scores = torch.zeros(batch, beams, device=device)
    scores[:, 1:] = _MASKED  # at first only the first beam's continuations count
    return Beams(running, scores, running.clone(),
                 torch.full((batch, beams), _MASKED, device=device),
                 torch.zeros(batch, beams, dtype=torch.long, device=device),
                 torch.zeros(batch, beams, dtype=torch.bool, device=device),
                 torch.ones(batch, 1, dtype=torch.bool, device=device))


def _top_continuations(total: Tensor, keep: int, config: GenerationConfig,
                       generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """total (B, K * V) -> the ``keep`` best (or sampled) scores and flat indices (B, keep)."""
    if not config.do_sample:
        return torch.topk(total, k=keep)
    index = torch.multinomial(torch.softmax(total, dim=-1), keep, generator=generator)
    scores = total.gather(1, index)
    scores, order = scores.sort(dim=-1, descending=True)
    return scores, index.gather(1, order)


def _finish(state: Beams, cand: Tensor, top_scores: Tensor, hits: Tensor, top_mask: Tensor,
            generated: int, config: GenerationConfig) -> None:
    """Merge the top-K candidates that just finished into the finished set, in place."""
    just = hits & top_mask[None, :]
    scores = top_scores / (generated ** config.length_penalty)
    full = torch.all(state.is_finished, dim=-1, keepdim=True) & (config.early_stopping is True)
    scores += full.to(torch.float32) * _MASKED
    scores += (~state.improvable).to(torch.float32) * _MASKED
    scores += (~just) * _MASKED
    merged_scores = torch.cat([state.finished_scores, scores], dim=1)
    best = torch.topk(merged_scores, k=state.finished.shape[1])[1]
    lengths = torch.full_like(top_scores, generated, dtype=torch.long)
    state.finished = _gather(torch.cat([state.finished, cand], dim=1), best)
    state.finished_scores = _gather(merged_scores, best)
    state.finished_lengths = _gather(torch.cat([state.finished_lengths, lengths], dim=1), best)
    state.is_finished = _gather(torch.cat([state.is_finished, just], dim=1), best)


def _update_improvable(state: Beams, generated: int, max_new: int,
                       config: GenerationConfig) -> None:
    """Can a running beam still beat the worst finished one? (transformers' heuristic)"""
    lp = config.length_penalty
    best_length = max_new if config.early_stopping == "never" and lp > 0.0 else generated
    best = state.running_scores[:, :1] / (best_length ** lp)
    worst = torch.where(state.is_finished,
                        torch.min(state.finished_scores, dim=1, keepdim=True)[0], _MASKED)
    state.improvable = state.improvable & torch.any(best > worst, dim=-1, keepdim=True)


def _step(state: Beams, run: Run, logits: Tensor, cur: int, max_length: int,
          config: GenerationConfig) -> tuple[Tensor, Tensor]:
    """One beam step at sequence length ``cur``; -> (the parent row of each new running
    row (B * K,), which top continuations hit a stop (B, keep))."""
    b, k, _ = state.running.shape
    flat = state.running[:, :, :cur].reshape(b * k, cur)
    logprobs = apply(run.processors, flat, torch.log_softmax(logits.float(), dim=-1))
    vocab = logprobs.shape[-1]
    total = (logprobs.view(b, k, vocab) + state.running_scores[:, :, None]).view(b, k * vocab)
    keep = max(2, 1 + len(config.eos_ids)) * k
    top_scores, top_index = _top_continuations(total, keep, config, run.generator)
    parent = top_index // vocab  # (B, keep)
    cand = _gather(state.running, parent)  # (B, keep, L) a copy
    cand[:, :, cur] = top_index % vocab
    hits = run.stop(cand[:, :, : cur + 1].reshape(b * keep, cur + 1), run.prompt_length)
    hits = hits.view(b, keep) | (cur + 1 >= max_length)
    alive = top_scores + hits.to(torch.float32) * _MASKED
    nxt = torch.topk(alive, k=k)[1]
    top_mask = torch.arange(keep, device=hits.device) < k
    _finish(state, cand, top_scores, hits, top_mask, cur + 1 - run.prompt_length, config)
    state.running, state.running_scores = _gather(cand, nxt), _gather(alive, nxt)
    offset = torch.arange(b, device=parent.device)[:, None] * k
    return (_gather(parent, nxt) + offset).view(-1), hits


def _going_on(state: Beams, hits: Tensor, config: GenerationConfig) -> bool:
    improvement = bool(torch.any(state.improvable))
    open_beam = not (bool(torch.all(state.is_finished)) and config.early_stopping is True)
    return improvement and open_beam and not bool(torch.all(hits))


def _output(state: Beams, run: Run, config: GenerationConfig) -> GenerationOutput:
    """The best ``num_return_sequences`` finished hypotheses of each prompt."""
    r, t = config.num_return_sequences, run.prompt_length
    seqs = state.finished[:, :r].reshape(-1, state.finished.shape[-1])
    lengths = state.finished_lengths[:, :r].reshape(-1)
    seqs = seqs[:, : t + int(lengths.max())]
    finished = torch.zeros(seqs.shape[0], dtype=torch.bool, device=seqs.device)
    if run.stop.active:
        for row, n in enumerate(lengths.tolist()):
            finished[row] = run.stop(seqs[row : row + 1, : t + n], t)[0]
    return GenerationOutput(seqs, t, finished,
                            sequence_scores=state.finished_scores[:, :r].reshape(-1))


def beam_search(decoder: Decoder, run: Run, config: GenerationConfig, *,
                batch: int) -> GenerationOutput:
    """Beam search over ``run`` (prompts already repeated ``num_beams`` times)."""
    k, t = config.num_beams, run.prompt_length
    max_length = t + config.max_new_tokens
    fill = config.pad_id if config.pad_id is not None else 0
    state = _start(run, batch, k, max_length, fill)
    mask = run.mask
    logits, cache = decoder.prefill(run.ids, mask)
    for cur in range(t, max_length):
        rows, hits = _step(state, run, logits, cur, max_length, config)
        _update_improvable(state, cur + 1 - t, config.max_new_tokens, config)
        if not _going_on(state, hits, config):
            break
        cache = decoder.reorder_cache(cache, rows)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        logits, cache = decoder.step(state.running[:, :, cur].reshape(-1, 1), mask, cache)
    return _output(state, run, config)

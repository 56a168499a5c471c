"""Greedy search and sampling, one step at a time; :func:`generate` and :func:`stream`.

Both run the same step generator (:func:`_steps`), so a stream yields exactly the
tokens ``generate`` returns. Semantics are transformers' ``GenerationMixin._sample``
(version 5.x, checked against 5.24): processors see float32 logits; rows that met a stop
token or string are filled with the pad id while the others go on; every row is still fed
to the decoder (so batched results equal transformers' bit for bit).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from mmcore.generation.beam import beam_search
from mmcore.generation.config import GenerationConfig
from mmcore.generation.processors import Processor, apply
from mmcore.generation.protocol import Decoder, GenerationOutput
from mmcore.generation.run import Run, start
from mmcore.generation.stopping import Detokenize


def _choose(scores: Tensor, do_sample: bool, generator: torch.Generator | None) -> Tensor:
    """scores (R, V) -> the next token of each row (R,)."""
    if not do_sample:
        return scores.argmax(dim=-1)
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def _steps(decoder: Decoder, run: Run, config: GenerationConfig) -> Iterator[Tensor]:
    """Greedy search or sampling; yields each step's tokens (R,) and updates ``run``."""
    logits, cache = decoder.prefill(run.ids, run.mask)
    pad = config.pad_id
    for i in range(config.max_new_tokens):
        logits = logits.float()  # (R, V)
        if config.output_logits:
            run.logits.append(logits)
        scores = apply(run.processors[: run.warpers_from], run.ids, logits)
        warped = apply(run.processors[run.warpers_from :], run.ids, scores)
        token = _choose(warped, config.do_sample, run.generator)
        if config.output_token_logprobs:
            _keep_logprob(run, scores, token)
        if run.stop.active and pad is not None:
            token = torch.where(run.unfinished, token, torch.full_like(token, pad))
        run.ids = torch.cat([run.ids, token[:, None]], dim=1)
        run.mask = torch.cat([run.mask, run.mask.new_ones(run.mask.shape[0], 1)], dim=1)
        if run.stop.active:
            run.unfinished = run.unfinished & ~run.stop(run.ids, run.prompt_length,
                                                        rows=run.unfinished)
        yield token
        if i + 1 == config.max_new_tokens or not bool(run.unfinished.any()):
            return
        logits, cache = decoder.step(token[:, None], run.mask, cache)


def _keep_logprob(run: Run, scores: Tensor, token: Tensor) -> None:
    """Record each row's chosen-token log-probability (R,), 0 for rows already stopped."""
    chosen = torch.log_softmax(scores, dim=-1).gather(1, token[:, None])[:, 0]
    run.token_logprobs.append(torch.where(run.unfinished, chosen, torch.zeros_like(chosen)))


def _expand(config: GenerationConfig) -> int:
    return max(config.num_beams, config.num_return_sequences)


@torch.no_grad()
def generate(decoder: Decoder, input_ids: Tensor, *, attention_mask: Tensor | None = None,
             config: GenerationConfig | None = None, processors: Sequence[Processor] = (),
             detokenize: Detokenize | None = None,
             generator: torch.Generator | None = None) -> GenerationOutput:
    """Generate continuations of left-padded prompts ``input_ids (B, T)``.

    ``attention_mask (B, T)``: True (or 1) on real tokens; ``processors``: extra logit
    processors (a model's rules) run after the built-in constraints; ``detokenize``: ids
    -> text, needed for ``stop_strings``; ``generator``: the sampling RNG (else one seeded
    from ``config.seed``, else torch's global RNG, as transformers)."""
    config = config or GenerationConfig()
    run = start(input_ids, attention_mask, config, expand=_expand(config),
                processors=processors, detokenize=detokenize, generator=generator)
    if config.num_beams > 1:
        return beam_search(decoder, run, config, batch=input_ids.shape[0])
    for _ in _steps(decoder, run, config):
        pass
    logits = torch.stack(run.logits, dim=1) if config.output_logits else None
    logprobs = (torch.stack(run.token_logprobs, dim=1) if config.output_token_logprobs
                else None)
    finished = ~run.unfinished if run.stop.active else torch.zeros_like(run.unfinished)
    return GenerationOutput(run.ids, run.prompt_length, finished, logits=logits,
                            token_logprobs=logprobs)


@torch.no_grad()
def stream(decoder: Decoder, input_ids: Tensor, *, attention_mask: Tensor | None = None,
           config: GenerationConfig | None = None, processors: Sequence[Processor] = (),
           detokenize: Detokenize | None = None,
           generator: torch.Generator | None = None) -> Iterator[Tensor]:
    """Like :func:`generate` (greedy or sampling), yielding each step's new tokens
    (B * num_return_sequences,) as soon as they are chosen; rows already stopped yield
    the pad id. Beam search cannot stream (its best hypothesis is known only at the end)."""
    config = config or GenerationConfig()
    if config.num_beams > 1:
        raise ValueError("stream: beam search (num_beams > 1) cannot stream; use generate")
    run = start(input_ids, attention_mask, config, expand=_expand(config),
                processors=processors, detokenize=detokenize, generator=generator)
    yield from _steps(decoder, run, config)

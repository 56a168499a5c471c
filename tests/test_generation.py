"""The one generation loop against transformers' ``generate`` as the reference.

A tiny random ``LlamaForCausalLM`` is wrapped in an adapter implementing
:class:`mmcore.generation.Decoder` with its ``past_key_values``; mmcore's loop must pick
the same tokens as ``model.generate`` (greedy, beam search, repetition penalty, left
padding, sampling under the same seed), and its cached decode must equal recomputing
the whole sequence at every step.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from mmcore.generation import GenerationConfig, generate, stream

transformers = pytest.importorskip("transformers")

VOCAB = 48


class HFDecoder:
    """A transformers causal LM as an mmcore Decoder. Positions come from the mask as in
    transformers (cumsum - 1, 0 on padding); an all-ones mask is passed as None, as
    ``generate`` does. ``use_cache=False``: the 'cache' is the ids so far, and every call
    reruns the whole sequence."""

    def __init__(self, model: Any, use_cache: bool = True) -> None:
        self.model, self.use_cache = model, use_cache

    def _forward(self, ids: Tensor, mask: Tensor, past: Any) -> tuple[Tensor, Any]:
        m = mask.long()
        positions = (m.cumsum(-1) - 1).masked_fill(m == 0, 0)[:, -ids.shape[1]:]
        out = self.model(input_ids=ids, attention_mask=None if bool(m.all()) else m,
                         position_ids=positions, cache=past, use_cache=self.use_cache)
        return out.logits[:, -1], out.cache

    def prefill(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Any]:
        if not self.use_cache:
            return self._forward(input_ids, attention_mask, None)[0], input_ids
        return self._forward(input_ids, attention_mask,
                             transformers.DynamicCache(config=self.model.config))

    def step(self, next_ids: Tensor, attention_mask: Tensor, cache: Any) -> tuple[Tensor, Any]:
        if not self.use_cache:
            ids = torch.cat([cache, next_ids], dim=1)
            return self._forward(ids, attention_mask, None)[0], ids
        return self._forward(next_ids, attention_mask, cache)

    def reorder_cache(self, cache: Any, rows: Tensor) -> Any:
        if not self.use_cache:
            return cache[rows]
        cache.reorder_cache(rows)
        return cache


@pytest.fixture(scope="module")
def model() -> Any:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=64,
                                   bos_token_id=None, eos_token_id=None, pad_token_id=None)
    m = transformers.LlamaForCausalLM(cfg).eval().float()
    m.generation_config.eos_token_id = None
    m.generation_config.pad_token_id = None
    m.generation_config.bos_token_id = None
    return m


@pytest.fixture(scope="module")
def prompt() -> Tensor:
    return torch.tensor([[5, 17, 3, 29, 11, 8]])


def hf_generate(model: Any, ids: Tensor, mask: Tensor | None = None, **kw: Any) -> Any:
    kw.setdefault("do_sample", False)
    with torch.no_grad():
        return model.generate(ids, attention_mask=mask, **kw)


def first_new_token(model: Any, ids: Tensor, n: int = 8, step: int = 2) -> int:
    """A token the greedy continuation reaches at step ``step`` (a stop token that will
    really be met)."""
    out = generate(HFDecoder(model), ids, config=GenerationConfig(max_new_tokens=n))
    return int(out.new_tokens[0, step])


# -- greedy -------------------------------------------------------------------------------


def test_greedy_equals_transformers(model: Any, prompt: Tensor) -> None:
    ours = generate(HFDecoder(model), prompt, config=GenerationConfig(max_new_tokens=10))
    ref = hf_generate(model, prompt, max_new_tokens=10)
    assert torch.equal(ours.sequences, ref)
    assert ours.prompt_length == prompt.shape[1] and not ours.finished.any()


def test_greedy_stops_at_eos_like_transformers(model: Any, prompt: Tensor) -> None:
    eos = first_new_token(model, prompt)
    cfg = GenerationConfig(max_new_tokens=10, eos_token_id=[VOCAB - 1, eos], pad_token_id=0)
    ours = generate(HFDecoder(model), prompt, config=cfg)
    ref = hf_generate(model, prompt, max_new_tokens=10, eos_token_id=[VOCAB - 1, eos],
                      pad_token_id=0)
    assert torch.equal(ours.sequences, ref)
    assert ours.sequences.shape[1] == prompt.shape[1] + 3 and ours.finished.all()


def left_padded() -> tuple[Tensor, Tensor]:
    pad = 0
    ids = torch.tensor([[pad, pad, pad, 7, 21, 4], [9, 30, 2, 14, 40, 6], [pad, 12, 5, 5, 33, 1]])
    return ids, ids != pad


def test_batched_left_padded_greedy(model: Any) -> None:
    ids, mask = left_padded()
    eos = first_new_token(model, ids[1:2])
    cfg = GenerationConfig(max_new_tokens=8, eos_token_id=eos, pad_token_id=0)
    ours = generate(HFDecoder(model), ids, attention_mask=mask, config=cfg)
    ref = hf_generate(model, ids, mask.long(), max_new_tokens=8, eos_token_id=eos,
                      pad_token_id=0)
    assert torch.equal(ours.sequences, ref)
    # each row alone (no padding) continues the same way: padding is really ignored
    alone = generate(HFDecoder(model), ids[0:1, 3:], config=cfg)
    n = alone.new_tokens.shape[1]
    assert torch.equal(ours.new_tokens[0, :n], alone.new_tokens[0])


@pytest.mark.parametrize("padded", [False, True])
def test_repetition_penalty_equals_transformers(model: Any, prompt: Tensor, padded: bool) -> None:
    ids, mask = left_padded() if padded else (prompt, None)
    cfg = GenerationConfig(max_new_tokens=10, repetition_penalty=1.8)
    ours = generate(HFDecoder(model), ids, attention_mask=mask, config=cfg)
    ref = hf_generate(model, ids, None if mask is None else mask.long(), max_new_tokens=10,
                      repetition_penalty=1.8, pad_token_id=0)
    assert torch.equal(ours.sequences, ref)
    plain = generate(HFDecoder(model), ids, attention_mask=mask,
                     config=GenerationConfig(max_new_tokens=10))
    assert not torch.equal(plain.sequences, ours.sequences)  # the penalty did something


def no_immediate_repeat(input_ids: Tensor, scores: Tensor) -> Tensor:
    """A model rule as a processor: never the previous token again."""
    return scores.scatter(1, input_ids[:, -1:], float("-inf"))


@pytest.mark.parametrize("beams", [1, 3])
def test_constraints_and_model_rules_equal_transformers(model: Any, beams: int) -> None:
    ids, mask = left_padded()
    eos = first_new_token(model, ids[1:2])
    options = {"min_new_tokens": 4, "suppress_tokens": [17, 33], "begin_suppress_tokens": [25],
               "eos_token_id": eos, "pad_token_id": 0, "num_beams": beams}
    cfg = GenerationConfig(max_new_tokens=8, **options)
    ours = generate(HFDecoder(model), ids, attention_mask=mask, config=cfg,
                    processors=[no_immediate_repeat])
    rules = transformers.LogitsProcessorList([no_immediate_repeat])
    ref = hf_generate(model, ids, mask.long(), max_new_tokens=8, logits_processor=rules,
                      **options)
    assert torch.equal(ours.sequences, ref)
    new = ours.new_tokens
    assert not (new[:, :4] == eos).any() and not torch.isin(new, torch.tensor([17, 33])).any()
    assert not (new[:, 1:] == new[:, :-1]).any() and not (new[:, 0] == 25).any()


def test_forced_tokens(model: Any, prompt: Tensor) -> None:
    cfg = GenerationConfig(max_new_tokens=5, forced_tokens={0: 40, 3: 41})
    out = generate(HFDecoder(model), prompt, config=cfg).new_tokens[0].tolist()
    assert out[0] == 40 and out[3] == 41
    # what follows a forced token is the model's greedy choice after it
    rest = generate(HFDecoder(model), torch.cat([prompt, torch.tensor([[40]])], dim=1),
                    config=GenerationConfig(max_new_tokens=1)).new_tokens[0].tolist()
    assert out[1] == rest[0]


def test_bad_inputs(model: Any, prompt: Tensor) -> None:
    dec = HFDecoder(model)
    with pytest.raises(ValueError, match="left-padded"):
        generate(dec, prompt, attention_mask=torch.tensor([[1, 1, 1, 1, 1, 0]]))
    with pytest.raises(ValueError, match="does not match"):
        generate(dec, prompt, attention_mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match="input_ids"):
        generate(dec, prompt[0])
    with pytest.raises(ValueError, match="pad_token_id"):
        generate(dec, prompt, config=GenerationConfig(stop_strings=["x"]), detokenize=str)


# -- beam search --------------------------------------------------------------------------


BEAM_CASES = [
    # beams, stop tokens, length_penalty, early_stopping, num_return_sequences
    (2, 0, 1.0, False, 1),
    (2, 1, 1.0, False, 2),
    (2, 2, 1.0, False, 1),
    (4, 0, 1.0, False, 1),
    (4, 1, 1.0, False, 3),
    (4, 2, 1.0, False, 4),
    (4, 2, 2.0, False, 1),
    (4, 1, -1.0, True, 2),
    (4, 2, 0.0, True, 2),
    (3, 1, 0.5, "never", 3),
    (3, 2, -0.5, "never", 2),
]


@pytest.mark.parametrize(("beams", "n_eos", "lp", "early", "ret"), BEAM_CASES)
def test_beam_search_equals_transformers(model: Any, beams: int, n_eos: int, lp: float,
                                         early: bool | str, ret: int) -> None:
    ids, mask = left_padded()
    stops = [first_new_token(model, ids[1:2]), first_new_token(model, ids[1:2], step=4)]
    eos = stops[:n_eos] or None
    cfg = GenerationConfig(max_new_tokens=7, num_beams=beams, eos_token_id=eos,
                           pad_token_id=VOCAB - 2, length_penalty=lp, early_stopping=early,
                           num_return_sequences=ret)
    ours = generate(HFDecoder(model), ids, attention_mask=mask, config=cfg)
    ref = hf_generate(model, ids, mask.long(), max_new_tokens=7, num_beams=beams,
                      eos_token_id=eos, pad_token_id=VOCAB - 2, length_penalty=lp,
                      early_stopping=early, num_return_sequences=ret,
                      return_dict_in_generate=True, output_scores=True)
    assert torch.equal(ours.sequences, ref.sequences)
    assert ours.sequence_scores is not None
    torch.testing.assert_close(ours.sequence_scores, ref.sequences_scores, rtol=0, atol=1e-6)


def test_beam_search_with_eos_finishes_some_hypotheses(model: Any, prompt: Tensor) -> None:
    eos = first_new_token(model, prompt)
    cfg = GenerationConfig(max_new_tokens=8, num_beams=4, eos_token_id=eos,
                           num_return_sequences=4)
    out = generate(HFDecoder(model), prompt, config=cfg)
    assert out.finished.any()
    assert out.sequence_scores is not None and out.sequence_scores.shape == (4,)
    assert bool((out.sequence_scores[:-1] >= out.sequence_scores[1:]).all())


# -- sampling -----------------------------------------------------------------------------


def test_sampling_is_reproducible_from_a_seed(model: Any, prompt: Tensor) -> None:
    cfg = GenerationConfig(max_new_tokens=12, do_sample=True, temperature=1.5, top_p=0.9,
                           top_k=20, seed=3)
    a = generate(HFDecoder(model), prompt, config=cfg).sequences
    b = generate(HFDecoder(model), prompt, config=cfg).sequences
    c = generate(HFDecoder(model), prompt, config=cfg.model_copy(update={"seed": 4})).sequences
    assert torch.equal(a, b) and not torch.equal(a, c)
    g = torch.Generator().manual_seed(3)
    assert torch.equal(generate(HFDecoder(model), prompt, config=cfg, generator=g).sequences, a)


def test_top_k_1_sampling_is_greedy(model: Any, prompt: Tensor) -> None:
    greedy = generate(HFDecoder(model), prompt, config=GenerationConfig(max_new_tokens=10))
    cfg = GenerationConfig(max_new_tokens=10, do_sample=True, top_k=1, temperature=2.0, seed=1)
    assert torch.equal(generate(HFDecoder(model), prompt, config=cfg).sequences,
                       greedy.sequences)


def test_sampling_equals_transformers_under_the_global_seed(model: Any) -> None:
    ids, mask = left_padded()
    kw = {"temperature": 0.7, "top_k": 10, "top_p": 0.8}
    cfg = GenerationConfig(max_new_tokens=8, do_sample=True, num_return_sequences=2, **kw)
    torch.manual_seed(11)
    ours = generate(HFDecoder(model), ids, attention_mask=mask, config=cfg)
    torch.manual_seed(11)
    ref = hf_generate(model, ids, mask.long(), max_new_tokens=8, do_sample=True,
                      num_return_sequences=2, **kw)
    assert torch.equal(ours.sequences, ref)


# -- stop strings and streaming -------------------------------------------------------------


def detokenize(ids: list[int]) -> str:
    return "".join(f"<{i}>" for i in ids)


def test_stop_strings(model: Any) -> None:
    ids, mask = left_padded()
    free = generate(HFDecoder(model), ids, attention_mask=mask,
                    config=GenerationConfig(max_new_tokens=10)).new_tokens
    row = free[0].tolist()
    j = next(i for i in range(1, len(row)) if row[i] not in row[:i])  # first new token
    stop = detokenize(row[j - 1 : j + 1])
    cfg = GenerationConfig(max_new_tokens=10, stop_strings=[stop], pad_token_id=VOCAB - 1)
    out = generate(HFDecoder(model), ids, attention_mask=mask, config=cfg,
                   detokenize=detokenize)
    got = out.new_tokens
    assert got[0, : j + 1].tolist() == row[: j + 1]
    assert (got[0, j + 1 :] == VOCAB - 1).all() and out.finished[0]
    for r in range(1, 3):  # the other rows stop too (or run on unchanged)
        text = detokenize(free[r].tolist())
        assert out.finished[r] == (stop in text)
    with pytest.raises(ValueError, match="detokenize"):
        generate(HFDecoder(model), ids, attention_mask=mask, config=cfg)


@pytest.mark.parametrize("sample", [False, True])
def test_stream_yields_what_generate_returns(model: Any, sample: bool) -> None:
    ids, mask = left_padded()
    eos = first_new_token(model, ids[1:2])
    cfg = GenerationConfig(max_new_tokens=9, eos_token_id=eos, do_sample=sample, seed=5,
                           top_p=0.9)
    out = generate(HFDecoder(model), ids, attention_mask=mask, config=cfg)
    steps = list(stream(HFDecoder(model), ids, attention_mask=mask, config=cfg))
    assert torch.equal(torch.stack(steps, dim=1), out.new_tokens)
    with pytest.raises(ValueError, match="beam"):
        next(stream(HFDecoder(model), ids, config=GenerationConfig(num_beams=2)))


# -- the cache ------------------------------------------------------------------------------


@pytest.mark.parametrize("beams", [1, 3])
def test_cached_decode_equals_recomputation(model: Any, beams: int) -> None:
    ids, mask = left_padded()
    cfg = GenerationConfig(max_new_tokens=8, num_beams=beams, output_logits=beams == 1)
    cached = generate(HFDecoder(model), ids, attention_mask=mask, config=cfg)
    full = generate(HFDecoder(model, use_cache=False), ids, attention_mask=mask, config=cfg)
    assert torch.equal(cached.sequences, full.sequences)
    if beams == 1:
        assert cached.logits is not None and full.logits is not None
        assert cached.logits.shape == (3, 8, VOCAB)
        torch.testing.assert_close(cached.logits, full.logits, rtol=1e-5, atol=1e-5)


def test_beam_sampling_equals_transformers_under_the_global_seed(model: Any) -> None:
    ids, mask = left_padded()
    eos = first_new_token(model, ids[1:2])
    kw = {"temperature": 0.8, "top_k": 12, "top_p": 0.9, "num_beams": 3, "eos_token_id": eos,
          "pad_token_id": 0, "num_return_sequences": 2}
    cfg = GenerationConfig(max_new_tokens=6, do_sample=True, **kw)
    torch.manual_seed(5)
    ours = generate(HFDecoder(model), ids, attention_mask=mask, config=cfg)
    torch.manual_seed(5)
    ref = hf_generate(model, ids, mask.long(), max_new_tokens=6, do_sample=True, **kw)
    assert torch.equal(ours.sequences, ref)

"""Logit processors, stop criteria and GenerationConfig validation (no model needed,
transformers' processors as the reference where they exist)."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from mmcore.generation import (
    ForceTokens,
    GenerationConfig,
    MinNewTokens,
    RepetitionPenalty,
    StopCriteria,
    SuppressAtBegin,
    SuppressTokens,
    Temperature,
    TopK,
    TopP,
    build_processors,
)

lp = pytest.importorskip("transformers.generation.logits_process")


def scores_and_ids(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 20, generator=g) * 3, torch.randint(0, 20, (3, 7), generator=g)


def test_top_p_against_a_hand_computed_distribution() -> None:
    probs = torch.tensor([[0.5, 0.05, 0.25, 0.15, 0.05]])
    scores = probs.log()
    # sorted: 0.5, 0.25, 0.15, 0.05, 0.05 -> cumulative 0.5, 0.75, 0.9, ...
    kept = TopP(0.75)(torch.zeros(1, 0, dtype=torch.long), scores).isfinite()
    assert kept.tolist() == [[True, False, True, False, False]]
    kept = TopP(0.8)(torch.zeros(1, 0, dtype=torch.long), scores).isfinite()
    assert kept.tolist() == [[True, False, True, True, False]]
    kept = TopP(0.4)(torch.zeros(1, 0, dtype=torch.long), scores).isfinite()
    assert kept.tolist() == [[True, False, False, False, False]]  # at least the best
    kept = TopP(1.0)(torch.zeros(1, 0, dtype=torch.long), scores).isfinite()
    assert kept.all()
    filtered = TopP(0.75)(torch.zeros(1, 0, dtype=torch.long), scores)
    renormalised = filtered.softmax(dim=-1)[0]
    assert math.isclose(float(renormalised[0]), 0.5 / 0.75, rel_tol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_processors_equal_transformers(seed: int) -> None:
    scores, ids = scores_and_ids(seed)
    cases = [
        (Temperature(0.7), lp.TemperatureLogitsWarper(0.7)),
        (TopK(4), lp.TopKLogitsWarper(4)),
        (TopK(2, min_keep=3), lp.TopKLogitsWarper(2, min_tokens_to_keep=3)),
        (TopP(0.6), lp.TopPLogitsWarper(0.6)),
        (TopP(0.3, min_keep=2), lp.TopPLogitsWarper(0.3, min_tokens_to_keep=2)),
        (RepetitionPenalty(1.3), lp.RepetitionPenaltyLogitsProcessor(1.3)),
        (RepetitionPenalty(0.8), lp.RepetitionPenaltyLogitsProcessor(0.8)),
        (SuppressTokens([1, 5, 19]), lp.SuppressTokensLogitsProcessor([1, 5, 19])),
        (SuppressAtBegin([2, 3], 7), lp.SuppressTokensAtBeginLogitsProcessor([2, 3], 7)),
        (SuppressAtBegin([2, 3], 6), lp.SuppressTokensAtBeginLogitsProcessor([2, 3], 6)),
        (MinNewTokens(3, [4, 9], 5), lp.MinNewTokensLengthLogitsProcessor(5, 3, [4, 9])),
        (MinNewTokens(2, [4, 9], 5), lp.MinNewTokensLengthLogitsProcessor(5, 2, [4, 9])),
    ]
    for ours, ref in cases:
        assert torch.equal(ours(ids, scores.clone()), ref(ids, scores.clone())), type(ours)


def test_repetition_penalty_ignores_prompt_padding() -> None:
    scores, ids = scores_and_ids()
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[0, :2] = False
    first_real = torch.tensor([2, 0, 0])
    ref = lp.RepetitionPenaltyLogitsProcessor(1.5, prompt_ignore_length=first_real)
    assert torch.equal(RepetitionPenalty(1.5, mask)(ids, scores), ref(ids, scores.clone()))


def test_force_tokens() -> None:
    scores, ids = scores_and_ids()
    force = ForceTokens({0: 7, 2: 3}, prompt_length=7)
    out = force(ids, scores)
    assert out.argmax(-1).tolist() == [7, 7, 7] and out.isfinite().sum() == 3
    assert torch.equal(force(ids[:, :6], scores), scores)  # before the new tokens
    grown = torch.cat([ids, ids[:, :2]], dim=1)
    assert force(grown, scores).argmax(-1).tolist() == [3, 3, 3]


def test_build_processors_order() -> None:
    cfg = GenerationConfig(do_sample=True, temperature=0.5, top_k=5, top_p=0.9,
                           repetition_penalty=1.2, eos_token_id=[1, 2], min_new_tokens=2,
                           suppress_tokens=[3], begin_suppress_tokens=[4],
                           forced_tokens={0: 5})

    def extra(ids: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return s

    built = build_processors(cfg, prompt_length=4, extra=[extra])
    kinds = [type(p).__name__ for p in built]
    assert kinds == ["RepetitionPenalty", "MinNewTokens", "SuppressTokens", "SuppressAtBegin",
                     "ForceTokens", "function", "Temperature", "TopK", "TopP"]
    greedy = build_processors(cfg.model_copy(update={"do_sample": False}), prompt_length=4)
    assert [type(p).__name__ for p in greedy][-1] == "ForceTokens"
    beams = build_processors(cfg.model_copy(update={"num_beams": 4}), prompt_length=4)
    assert [p.k for p in beams if isinstance(p, TopK)] == [5]
    assert [p.min_keep for p in beams if isinstance(p, TopP)] == [3]  # 2 stop tokens + 1


def test_stop_criteria() -> None:
    ids = torch.tensor([[1, 2, 3], [1, 4, 9], [1, 9, 9]])
    assert StopCriteria([3, 7])(ids, 1).tolist() == [True, False, False]
    stop = StopCriteria([], ["<4><9>"], lambda t: "".join(f"<{i}>" for i in t))
    assert stop(ids, 1).tolist() == [False, True, False]
    assert stop(ids, 2).tolist() == [False, False, False]  # the prompt's text is not searched
    assert stop(ids, 1, rows=torch.tensor([True, False, True])).tolist() == [False] * 3
    assert not StopCriteria([]).active
    with pytest.raises(ValueError, match="detokenize"):
        StopCriteria([1], ["x"])


@pytest.mark.parametrize(("kw", "match"), [
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"temperature": 0.0}, "temperature"),
    ({"top_k": 0}, "top_k"),
    ({"num_beams": 65}, "max_beams"),
    ({"num_beams": 2, "num_return_sequences": 3}, "num_return_sequences"),
    ({"num_return_sequences": 2}, "num_return_sequences"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_new_tokens": 10**6}, "max_tokens_limit"),
    ({"min_new_tokens": 40}, "min_new_tokens"),
    ({"stop_strings": [""]}, "stop_strings"),
    ({"forced_tokens": {-1: 3}}, "forced_tokens"),
    ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ({"beams": 2}, "beams"),
    ({"max_new_tokens": "5"}, "max_new_tokens"),
])
def test_config_is_validated(kw: dict, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        GenerationConfig(**kw)


def test_config_limits_can_be_raised() -> None:
    assert GenerationConfig(num_beams=100, max_beams=128).num_beams == 100
    cfg = GenerationConfig(eos_token_id=7)
    assert cfg.eos_ids == [7] and cfg.pad_id == 7
    assert GenerationConfig(eos_token_id=[7, 8], pad_token_id=0).pad_id == 0
    assert GenerationConfig(temperature=1).temperature == 1.0

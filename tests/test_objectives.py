"""The objectives: each trains a tiny model, hard negatives, masking, weights and costs."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor

import mmcore
from mmcore.builder import BuildContext
from mmcore.contract import ModelOutput, Tokens
from mmcore.cost import CostContext
from mmcore.kernels import Hardware, select_kernels
from mmcore.model import MultimodalModel
from mmcore.plugins import get_registry
from mmcore_objectives.masked import MaskedInputs, MaskedModelling, choose_masked
from mmcore_objectives.matching import Matching, sample_hard_negatives
from mmcore_objectives.ordering import permutations, segment_features

VOCAB, LENGTH, WIDTH = 16, 6, 16


def _modality(positions: str = "learned", encoder: bool = True) -> dict[str, Any]:
    spec: dict[str, Any] = {"tokenizer": {"type": "token-embedding", "vocab_size": VOCAB,
                                          "width": WIDTH, "context_length": LENGTH,
                                          "positions": positions}}
    if encoder:
        spec["encoder"] = {"type": "text-transformer", "layers": 1, "heads": 2, "causal": False}
    return spec


def _model(objectives: dict[str, Any], *, positions: str = "learned",
           modalities: tuple[str, ...] = ("alpha", "beta")) -> MultimodalModel:
    torch.manual_seed(0)
    return mmcore.build({
        "name": "objective-test",
        "modalities": {m: _modality(positions) for m in modalities},
        "fusion": {"type": "late", "embed_dim": WIDTH},
        "objectives": objectives,
    })


def _classes(batch: int, generator: torch.Generator) -> Tensor:
    """Rows of one repeated id each, all different ids. (B, L)"""
    return torch.randperm(VOCAB, generator=generator)[:batch, None].expand(batch, LENGTH)


def _train(model: MultimodalModel, make_batch: Any, steps: int, lr: float = 3e-3,
           key: str = "loss") -> tuple[float, float]:
    """Mean of ``key`` over the first and the last 5 of ``steps`` AdamW steps."""
    generator = torch.Generator().manual_seed(1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    history = []
    model.train()
    for _ in range(steps):
        terms = model.loss(make_batch(generator))
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        history.append(float(terms[key].detach()))
    return sum(history[:5]) / 5, sum(history[-5:]) / 5


# -- image-text matching ----------------------------------------------------------------


def test_hard_negatives_follow_the_similarity_softmax() -> None:
    sim = torch.tensor([[1.0, 0.9, 0.1, -0.5],
                        [0.2, 1.0, 0.8, 0.0],
                        [0.7, -0.2, 1.0, 0.3],
                        [0.0, 0.1, 0.6, 1.0]])
    temperature = 0.25
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_hard_negatives(sim, temperature=temperature,
                                               generator=generator) for _ in range(4000)])
    counts = torch.stack([torch.bincount(draws[:, i], minlength=4) for i in range(4)]).float()
    assert counts.diagonal().sum() == 0  # never the matching item
    off = sim / temperature - torch.eye(4) * 1e9
    expected = torch.softmax(off, dim=1)
    assert torch.allclose(counts / 4000, expected, atol=0.03)
    # the most similar non-matching item is drawn most often in every row
    assert torch.equal(counts.argmax(1), torch.tensor([1, 2, 0, 2]))
    hardest = sample_hard_negatives(sim, temperature=temperature, hardest=True)
    assert torch.equal(hardest, torch.tensor([1, 2, 0, 2]))


def test_matching_negatives_go_both_ways_and_eval_is_hardest() -> None:
    model = _model({"itm": {"type": "matching", "query": "alpha", "context": "beta",
                            "heads": 2, "seed": 3}})
    itm = model.objectives["itm"]
    assert isinstance(itm, Matching) and itm.query_width == WIDTH  # width from the builder
    sim = torch.tensor([[1.0, 0.0, 0.9], [0.8, 1.0, 0.0], [0.0, 0.7, 1.0]])
    itm.eval()
    neg_context, neg_query = itm.negatives(sim)
    assert neg_context.tolist() == [2, 0, 1]  # row-wise: a context per query
    assert neg_query.tolist() == [1, 2, 0]  # column-wise: a query per context
    itm.train()
    first = itm.negatives(sim)
    assert all(bool((n != torch.arange(3)).all()) for n in first)


def test_matching_trains() -> None:
    model = _model({"itm": {"type": "matching", "query": "alpha", "context": "beta",
                            "heads": 2, "seed": 0}})

    def batch(generator: torch.Generator) -> dict[str, Tensor]:
        ids = _classes(8, generator)
        return {"alpha": ids, "beta": (ids + 5) % VOCAB}

    first, last = _train(model, batch, steps=40)
    # 1/3 of the pairs match: always answering the prior costs H(1/3) = 0.64 nats
    assert first > 0.6 and last < 0.45


# -- masked modelling -------------------------------------------------------------------


def test_choose_masked_respects_padding_prefix_and_ratio() -> None:
    valid = torch.arange(10)[None, :] < torch.tensor([10, 6, 2, 1])[:, None]
    masked = choose_masked(valid, 0.5, keep_prefix=1, generator=torch.Generator().manual_seed(0))
    assert masked.sum(1).tolist() == [4, 2, 0, 0]  # round(0.5 * (n - 1)), < n - 1 maskable
    assert not bool((masked & ~valid).any()) and not bool(masked[:, 0].any())


def test_prepare_hides_tokens_from_the_encoder_only_in_loss() -> None:
    model = _model({"mm": {"type": "masked-modelling", "modality": "alpha", "ratio": 0.5,
                           "decoder_heads": 2}})
    ids = torch.randint(0, VOCAB, (2, LENGTH))
    batch = {"alpha": ids, "beta": ids}
    tokens = {m: model.tokenizers[m](ids) for m in ("alpha", "beta")}
    hidden, state = model.objectives["mm"].prepare(batch, tokens)
    assert isinstance(state, MaskedInputs)
    assert state.masked.sum(1).tolist() == [3, 3]
    assert not bool(hidden["alpha"].valid()[state.masked].any())
    assert bool((hidden["alpha"].x[state.masked] == 0).all())
    assert torch.equal(state.targets, tokens["alpha"].x.detach())
    assert hidden["beta"] is tokens["beta"]  # other modalities pass through
    assert model(batch).prepared is None  # a plain forward never masks
    with pytest.raises(ValueError, match=r"MultimodalModel\.loss"):
        model.loss(batch, output=model(batch))
    assert float(model.loss(batch)["mm/masked_fraction"]) == pytest.approx(0.5)


def _masked_objective(**params: Any) -> MaskedModelling:
    entry = get_registry().get("objective", "masked-modelling")
    cfg = entry.config.model_validate({"modality": "alpha", "width": 8, "decoder_heads": 2,
                                       **params})
    torch.manual_seed(0)
    return entry.factory(cfg, BuildContext(kernels=select_kernels(None, Hardware())))


@pytest.mark.parametrize("target", ["features", "ids"])
def test_masked_loss_counts_masked_positions_only(target: str) -> None:
    objective = _masked_objective(**({"target": "ids", "vocab_size": 7} if target == "ids"
                                     else {}))
    objective.eval()
    generator = torch.Generator().manual_seed(0)
    valid = torch.ones(2, 5, dtype=torch.bool)
    masked = torch.tensor([[False, True, False, True, False], [True, False, False, False, False]])
    x = torch.randn(2, 5, 8, generator=generator)
    targets = (torch.randn(2, 5, 8, generator=generator) if target == "features"
               else torch.randint(0, 7, (2, 5), generator=generator))

    def loss(t: Tensor) -> Tensor:
        output = ModelOutput(tokens={"alpha": Tokens(x, valid & ~masked)}, embeddings={},
                             prepared=MaskedInputs(t, masked, valid))
        return objective(output, {})["loss"]

    base = loss(targets)
    other = targets.clone()
    other[~masked] = (other[~masked] + 3) % 7 if target == "ids" else 100.0
    assert torch.equal(loss(other), base)  # unmasked targets do not count
    other = targets.clone()
    other[masked] = (other[masked] + 3) % 7 if target == "ids" else 100.0
    assert not torch.allclose(loss(other), base)
    pred = objective.reconstruct(Tokens(x, valid & ~masked), MaskedInputs(targets, masked, valid))
    if target == "features":  # the loss is the MSE over the three masked positions
        manual = ((pred - targets) ** 2)[masked].mean()
    else:
        manual = torch.nn.functional.cross_entropy(pred[masked], targets[masked])
    assert torch.allclose(base, manual, atol=1e-6)


@pytest.mark.parametrize("target", ["features", "ids"])
def test_masked_modelling_trains(target: str) -> None:
    # per-token normalised features: predicting zeros (or any constant) costs 1.0
    extra = ({"target": "ids", "vocab_size": VOCAB} if target == "ids"
             else {"normalize_target": True})
    model = _model({"mm": {"type": "masked-modelling", "modality": "alpha", "ratio": 0.5,
                           "decoder_heads": 2, **extra}}, modalities=("alpha",))

    def batch(generator: torch.Generator) -> dict[str, Tensor]:
        return {"alpha": _classes(8, generator)}  # a masked id equals its neighbours

    first, last = _train(model, batch, steps=40, lr=1e-2)
    trivial = math.log(VOCAB) if target == "ids" else 1.0
    assert first > 0.8 * trivial and last < 0.4 * trivial


# -- temporal ordering ------------------------------------------------------------------


def test_segments_cut_each_row_by_its_own_length() -> None:
    x = torch.arange(7, dtype=torch.float32)[None, :, None].expand(2, 7, 1)
    mask = torch.arange(7)[None, :] < torch.tensor([7, 4])[:, None]
    features, usable = segment_features(Tokens(x, mask), 3, keep_prefix=1)
    # row 0 keeps tokens 1..6 -> [1, 2], [3, 4], [5, 6]; row 1 keeps 1..3 -> [1], [2], [3]
    assert features[..., 0].tolist() == [[1.5, 3.5, 5.5], [1.0, 2.0, 3.0]]
    assert usable.tolist() == [True, True]
    _, usable = segment_features(Tokens(x, mask), 4, keep_prefix=1)
    assert usable.tolist() == [True, False]
    assert permutations(3).shape == (6, 3)


def test_temporal_ordering_trains_on_content_alone() -> None:
    # position-free tokens: only the content (ids that count upwards) tells the order
    model = _model({"order": {"type": "temporal-ordering", "modality": "alpha",
                              "segments": 3, "hidden": 32}},
                   positions="none", modalities=("alpha",))

    def batch(generator: torch.Generator) -> dict[str, Tensor]:
        start = torch.randint(0, VOCAB, (8, 1), generator=generator)
        return {"alpha": (start + torch.arange(LENGTH)) % VOCAB}

    first, last = _train(model, batch, steps=40, lr=1e-2)
    assert first > 0.8 * math.log(6) and last < 0.5 * first


# -- captioning -------------------------------------------------------------------------


def test_captioning_trains() -> None:
    model = _model({"lm": {"type": "captioning", "context": "alpha", "vocab_size": VOCAB,
                           "width": 16, "layers": 1, "heads": 2, "max_length": LENGTH}},
                   modalities=("alpha",))

    def batch(generator: torch.Generator) -> dict[str, Any]:
        ids = _classes(8, generator)
        caption = torch.stack([(ids[:, 0] + k) % VOCAB for k in range(4)], dim=1)  # (B, 4)
        return {"alpha": ids, "text": {"ids": caption, "mask": torch.ones_like(caption).bool()}}

    first, last = _train(model, batch, steps=40, lr=1e-2)
    assert first > 0.8 * math.log(VOCAB) and last < 0.5 * first


# -- combining objectives ---------------------------------------------------------------


def test_weighted_objectives_sum() -> None:
    model = _model({
        "itm": {"type": "matching", "query": "alpha", "context": "beta", "heads": 2,
                "weight": 0.5},
        "order": {"type": "temporal-ordering", "modality": "beta", "hidden": 8, "weight": 2.0},
        "lm": {"type": "captioning", "context": "beta", "vocab_size": VOCAB, "width": 8,
               "layers": 1, "heads": 2, "max_length": LENGTH, "weight": 0.25},
    })
    model.eval()  # hardest negatives: the matching loss is deterministic
    ids = torch.randint(0, VOCAB, (4, LENGTH), generator=torch.Generator().manual_seed(0))
    batch = {"alpha": ids, "beta": ids.flip(1), "text": ids}
    with torch.no_grad():
        terms = model.loss(batch)
        output = model(batch)
        alone = {n: float(o(output, batch)["loss"]) for n, o in model.objectives.items()}
    assert all(v > 0.1 for v in alone.values())
    expected = 0.5 * alone["itm"] + 2.0 * alone["order"] + 0.25 * alone["lm"]
    assert float(terms["loss"]) == pytest.approx(expected, rel=1e-5)
    assert float(terms["order/loss"]) == pytest.approx(alone["order"], rel=1e-5)


# -- costs ------------------------------------------------------------------------------


COST_CASES = [
    ("head", "classifier", {"num_classes": 5, "hidden": 7}),
    ("objective", "matching", {"query": "alpha", "context": "beta", "query_width": 16,
                               "context_width": 12, "heads": 4, "layers": 2}),
    ("objective", "masked-modelling", {"modality": "alpha", "width": 16, "target": "ids",
                                       "vocab_size": 30, "decoder_width": 8,
                                       "decoder_heads": 2, "decoder_layers": 2}),
    ("objective", "captioning", {"context": "alpha", "context_width": 12, "vocab_size": 20,
                                 "width": 16, "heads": 2, "tie_embeddings": False}),
    ("objective", "temporal-ordering", {"modality": "alpha", "width": 8, "segments": 4}),
    ("objective", "contrastive", {"pairs": [["alpha", "beta"]], "loss": "sigmoid"}),
]


def _cost_cases() -> list[Any]:
    registry = get_registry()
    tiny = [(kind, e.name, e.tiny or {}) for kind in ("head", "objective")
            for e in registry.list(kind) if e.plugin == "mmcore_objectives"]
    return [pytest.param(k, n, p, id=f"{k}:{n}:{i}")
            for i, (k, n, p) in enumerate(tiny + COST_CASES)]


@pytest.mark.parametrize(("kind", "name", "params"), _cost_cases())
def test_cost_params_equal_the_built_module(kind: str, name: str, params: dict[str, Any]) -> None:
    entry = get_registry().get(kind, name)
    assert entry.cost is not None, f"{kind} {name} registers no cost"
    cfg = entry.config.model_validate(params)
    embeddings = {"alpha": 8, "beta": 8, "fused": 8}
    ctx = BuildContext(kernels=select_kernels(None, Hardware()), embedding_widths=embeddings,
                       heads={"logits": 3})
    with torch.device("meta"):
        module = entry.factory(cfg, ctx)
    cost = entry.cost(cfg, CostContext(embedding_widths=embeddings, heads={"logits": 3}))
    assert cost.params == sum(p.numel() for p in module.parameters())
    assert cost.flops >= 0

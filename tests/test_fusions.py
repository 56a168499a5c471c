"""Fusion strategies: shapes, masks, every config option, analytic cost against the built
module (parameters exactly, FLOPs against torch's FLOP counter) and the frozen LM of
gated cross-attention."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mmcore.builder import BuildContext
from mmcore.contract import FusionOutput, Tokens
from mmcore.cost import Cost, CostContext, Shape
from mmcore.kernels import Hardware, KernelSet, select_kernels
from mmcore.plugins import get_registry
from mmcore.registry import Registry
from mmcore.testing import check_component
from mmcore_fusions import GatedCrossAttentionBlock

WIDTHS = {"alpha": 16, "beta": 12}
LENGTHS = {"alpha": 5, "beta": 8}
KERNELS = select_kernels(None, Hardware())
#: matmul attention, so torch's FLOP counter sees the attention core
REFERENCE = select_kernels({"attention": "reference", "cross_attention": "reference"},
                           Hardware())

# (fusion, params, widths or None for WIDTHS): every config option at least once
CASES: list[tuple[str, dict[str, Any], dict[str, int] | None]] = [
    ("early", {"width": 8, "layers": 1, "heads": 2}, None),
    ("early", {"width": 8, "layers": 2, "heads": 2, "fused_pooling": "cls",
               "pooling": {"alpha": "cls", "beta": "eot"}}, None),
    ("early", {"layers": 1, "heads": 2, "mlp_ratio": 2.0, "final_norm": False},
     {"alpha": 8, "beta": 8}),
    ("late", {"embed_dim": 8}, None),
    ("late", {"combine": "concat", "pooling": {"alpha": "cls"}}, None),
    ("late", {"embed_dim": 8, "combine": "mean", "projection_bias": True}, None),
    ("late", {"embed_dim": 8, "combine": "weighted", "default_pooling": "eot"}, None),
    ("late", {"embed_dim": 8, "combine": "attention"}, None),
    ("cross-attention", {"query": "alpha", "context": "beta", "layers": 2, "heads": 2}, None),
    ("cross-attention", {"query": "beta", "context": "alpha", "layers": 4, "heads": 2,
                         "every": 2, "causal": True, "pooling": {"beta": "eot"}}, None),
    ("co-attention", {"layers": 2, "heads": 2}, None),
    ("co-attention", {"layers": 1, "heads": 2, "combine": "product"}, {"alpha": 8, "beta": 8}),
    ("co-attention", {"layers": 1, "heads": 2, "combine": "mean", "modalities": ["beta", "gamma"],
                      "pooling": {"gamma": "cls"}}, {"alpha": 4, "beta": 8, "gamma": 8}),
    ("bottleneck", {"width": 8, "layers": 3, "fusion_layer": 1, "num_bottlenecks": 2,
                    "heads": 2}, None),
    ("bottleneck", {"width": 8, "layers": 2, "fusion_layer": 0, "heads": 2}, None),
    ("bottleneck", {"width": 8, "layers": 2, "fusion_layer": 2, "heads": 2}, None),
    ("bottleneck", {"layers": 1, "num_bottlenecks": 0, "heads": 2,
                    "pooling": {"alpha": "cls"}}, {"alpha": 8, "beta": 8}),
    ("perceiver", {"width": 16, "num_latents": 4, "layers": 1, "heads": 2}, None),
    ("perceiver", {"width": 8, "num_latents": 3, "layers": 2, "heads": 2, "cross_heads": 2,
                   "num_outputs": 2, "min_padding": 0}, None),
    ("perceiver-resampler", {"modality": "beta", "num_latents": 3, "layers": 1, "heads": 2},
     None),
    ("perceiver-resampler", {"modality": "beta", "width": 8, "num_latents": 2, "layers": 2,
                             "heads": 2, "time_embeddings": 3, "frame_tokens": 4,
                             "pooling": {"alpha": "eot"}}, None),
    ("gated-xattn", {"text": "alpha", "visual": "beta", "lm_layers": 2, "heads": 2}, None),
    ("gated-xattn", {"text": "alpha", "visual": "beta", "lm_layers": 4, "heads": 2,
                     "every": 2, "causal": False, "freeze_lm": False, "init_gate": 0.3,
                     "pooling": {"alpha": "eot"},
                     "resampler": {"num_latents": 2, "layers": 1, "heads": 2}}, None),
]
CASE_IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(CASES)]


def build(name: str, params: dict[str, Any], widths: dict[str, int] | None = None,
          kernels: KernelSet = KERNELS, seed: int = 0) -> Any:
    entry = get_registry().get("fusion", name)
    torch.manual_seed(seed)
    return entry.factory(entry.config.model_validate(params),
                         BuildContext(kernels=kernels, widths=dict(widths or WIDTHS)))


def cost_of(name: str, params: dict[str, Any], shapes: dict[str, Shape]) -> Cost:
    entry = get_registry().get("fusion", name)
    return entry.cost(entry.config.model_validate(params), CostContext(shapes=shapes))


def make_inputs(widths: dict[str, int] | None = None, batch: int = 3, seed: int = 0,
                lengths: dict[str, int] | None = None) -> dict[str, Tokens]:
    """name: Tokens (B, N, D); sample 0 is full, the others padded (real tokens first)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, width in sorted((widths or WIDTHS).items()):
        n = (lengths or LENGTHS).get(name, 6)
        real = torch.tensor([n, max(n - 2, 1), 1][:batch])
        out[name] = Tokens(torch.randn(batch, n, width, generator=g),
                           torch.arange(n)[None] < real[:, None])
    return out


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# -- every case: cost, shapes, masks -------------------------------------------------------


@pytest.mark.parametrize(("name", "params", "widths"), CASES, ids=CASE_IDS)
def test_cost_matches_the_built_module(name: str, params: dict[str, Any],
                                       widths: dict[str, int] | None) -> None:
    widths = widths or WIDTHS
    fusion = build(name, params, widths, kernels=REFERENCE)
    inputs = {m: Tokens(t.x[:1]) for m, t in make_inputs(widths, batch=1).items()}
    cost = cost_of(name, params, {m: Shape(t.x.shape[1], t.width) for m, t in inputs.items()})
    assert cost.params == n_params(fusion)
    assert cost.embeddings == fusion.embedding_widths
    with FlopCounterMode(display=False) as counter:
        fusion(inputs)
    assert cost.flops == counter.get_total_flops()  # 2 FLOPs per multiply-add, exactly
    assert cost.activations > 0 or name == "late"


@pytest.mark.parametrize(("name", "params", "widths"), CASES, ids=CASE_IDS)
def test_outputs_have_the_declared_shapes(name: str, params: dict[str, Any],
                                          widths: dict[str, int] | None) -> None:
    fusion = build(name, params, widths)
    inputs = make_inputs(widths)
    out = fusion(inputs)
    assert isinstance(out, FusionOutput)
    assert {k: tuple(v.shape) for k, v in out.embeddings.items()} == {
        k: (3, w) for k, w in fusion.embedding_widths.items()}
    assert set(out.tokens) - {"fused"} <= set(inputs)
    for key, tokens in out.tokens.items():
        assert tokens.x.shape[0] == 3 and torch.isfinite(tokens.x).all()
        if key in inputs and tokens.mask is not None:  # streams keep their sizes and masks
            assert torch.equal(tokens.mask, inputs[key].valid())


@pytest.mark.parametrize(("name", "params", "widths"), CASES, ids=CASE_IDS)
def test_padded_tokens_change_nothing(name: str, params: dict[str, Any],
                                      widths: dict[str, int] | None) -> None:
    fusion = build(name, params, widths).eval()
    inputs = make_inputs(widths)
    garbage = {m: Tokens(torch.where(t.valid()[..., None], t.x, 100 * torch.randn_like(t.x)),
                         t.mask) for m, t in inputs.items()}
    assert any(not torch.equal(garbage[m].x, inputs[m].x) for m in inputs)
    with torch.no_grad():
        a, b = fusion(inputs), fusion(garbage)
    for key in a.embeddings:
        torch.testing.assert_close(a.embeddings[key], b.embeddings[key], atol=1e-5, rtol=1e-5)
    for key, tokens in a.tokens.items():
        valid = tokens.valid()
        torch.testing.assert_close(tokens.x[valid], b.tokens[key].x[valid], atol=1e-5,
                                   rtol=1e-5)


@pytest.mark.parametrize(("name", "params", "widths"), CASES, ids=CASE_IDS)
def test_missing_and_dropped_modalities(name: str, params: dict[str, Any],
                                        widths: dict[str, int] | None) -> None:
    """A modality absent from the batch, or masked out for one sample (modality dropout):
    the fusion still runs, and every output is finite."""
    fusion = build(name, params, widths).eval()
    inputs = make_inputs(widths)
    for present in inputs:
        out = fusion({present: inputs[present]})
        assert present in out.embeddings or name == "perceiver"
        assert all(torch.isfinite(e).all() for e in out.embeddings.values())
    dropped = {m: Tokens(t.x, t.valid().clone()) for m, t in inputs.items()}
    first = sorted(dropped)[0]
    dropped[first].valid()[0] = False  # sample 0 lost this modality
    out = fusion(dropped)
    assert set(out.embeddings) == set(fusion.embedding_widths)
    assert all(torch.isfinite(e).all() for e in out.embeddings.values())


# -- option variants also pass the conformance suite ---------------------------------------


@pytest.mark.parametrize(("name", "tiny"), [
    ("late", {"embed_dim": 8, "combine": "attention"}),
    ("late", {"embed_dim": 8, "combine": "weighted"}),
    ("early", {"width": 8, "layers": 1, "heads": 2, "fused_pooling": "cls"}),
    ("bottleneck", {"width": 8, "layers": 3, "fusion_layer": 1, "num_bottlenecks": 1,
                    "heads": 2}),
    ("perceiver-resampler", {"modality": "beta", "width": 8, "num_latents": 2, "layers": 1,
                             "heads": 2, "time_embeddings": 2, "frame_tokens": 7}),
    ("gated-xattn", {"text": "alpha", "visual": "beta", "lm_layers": 2, "heads": 2,
                     "every": 2}),  # gates at 0: the cross-attention weights get zero grads
], ids=lambda v: v if isinstance(v, str) else "")
def test_option_variants_conform(name: str, tiny: dict[str, Any]) -> None:
    entry = get_registry().get("fusion", name)
    registry = Registry()
    registry.add(dataclasses.replace(entry, tiny=tiny))
    check_component(registry, "fusion", name)


# -- early ---------------------------------------------------------------------------------


def test_early_splits_the_joint_sequence_back() -> None:
    fusion = build("early", {"width": 8, "layers": 1, "heads": 2})
    inputs = make_inputs()
    out = fusion(inputs)
    assert {m: tuple(t.x.shape) for m, t in out.tokens.items()} == {
        "alpha": (3, 5, 8), "beta": (3, 8, 8)}
    assert all(out.tokens[m].mask is inputs[m].mask for m in inputs)
    # fused = mean over every real token of the joint sequence
    counts = {m: inputs[m].valid().sum(1, keepdim=True).float() for m in inputs}
    expected = sum(out.embeddings[m] * counts[m] for m in inputs) / sum(counts.values())
    torch.testing.assert_close(out.embeddings["fused"], expected)
    assert set(fusion.projections) == {"alpha", "beta"}  # both differ from width 8


def test_early_cls_token_is_not_a_modality_token() -> None:
    fusion = build("early", {"width": 8, "layers": 1, "heads": 2, "fused_pooling": "cls"})
    out = fusion(make_inputs())
    assert out.tokens["alpha"].x.shape == (3, 5, 8) and out.tokens["beta"].x.shape == (3, 8, 8)
    assert fusion.cls is not None and fusion.cls.shape == (1, 1, 8)
    mean = build("early", {"width": 8, "layers": 1, "heads": 2}).eval()
    assert not torch.allclose(out.embeddings["fused"], mean(make_inputs()).embeddings["fused"])


def test_early_widths_must_agree_without_width() -> None:
    with pytest.raises(ValueError, match="set width"):
        build("early", {"layers": 1, "heads": 2})
    assert len(build("early", {"layers": 1, "heads": 2}, {"a": 8, "b": 8}).projections) == 0
    with pytest.raises(ValueError, match="unknown modalities"):
        build("early", {"width": 8, "layers": 1, "heads": 2, "pooling": {"gamma": "cls"}})


def test_early_modality_type_embeddings_tell_modalities_apart() -> None:
    fusion = build("early", {"layers": 1, "heads": 2}, {"a": 8, "b": 8}).eval()
    same = torch.randn(1, 3, 8)
    out = fusion({"a": Tokens(same), "b": Tokens(same.clone())})
    assert not torch.allclose(out.embeddings["a"], out.embeddings["b"])


@pytest.mark.parametrize(("cls", "scores"), [("mean", 324**2), ("cls", 325**2)])
def test_early_attention_scores_of_the_joint_sequence(cls: str, scores: int) -> None:
    params = {"width": 768, "layers": 12, "heads": 12, "fused_pooling": cls}
    cost = cost_of("early", params, {"image": Shape(196, 768), "text": Shape(128, 512)})
    assert cost.attention_scores == scores  # 104,976 for 196 patches + 128 tokens


# -- late ----------------------------------------------------------------------------------


def test_late_keeps_concat_and_mean() -> None:
    concat = build("late", {"combine": "concat"})
    out = concat(make_inputs())
    assert concat.embedding_widths["fused"] == 28
    torch.testing.assert_close(out.embeddings["fused"],
                               torch.cat([out.embeddings["alpha"], out.embeddings["beta"]], -1))
    mean = build("late", {"embed_dim": 8, "combine": "mean"})
    out = mean(make_inputs())
    torch.testing.assert_close(out.embeddings["fused"],
                               (out.embeddings["alpha"] + out.embeddings["beta"]) / 2)
    assert "fused" not in mean({"alpha": make_inputs()["alpha"]}).embeddings


@pytest.mark.parametrize("combine", ["mean", "weighted", "attention"])
def test_late_combinations_need_one_width(combine: str) -> None:
    with pytest.raises(ValueError, match="needs one width"):
        build("late", {"combine": combine})


def test_late_weighted_is_a_softmax_over_learned_logits() -> None:
    fusion = build("late", {"embed_dim": 8, "combine": "weighted"})
    out = fusion(make_inputs())
    a, b = out.embeddings["alpha"], out.embeddings["beta"]
    torch.testing.assert_close(out.embeddings["fused"], (a + b) / 2)  # logits start at 0
    with torch.no_grad():
        fusion.combiner.logits.copy_(torch.tensor([math.log(3.0), 0.0]))
    torch.testing.assert_close(fusion(make_inputs()).embeddings["fused"], 0.75 * a + 0.25 * b)


def test_late_attention_pooling_over_modality_embeddings() -> None:
    fusion = build("late", {"embed_dim": 8, "combine": "attention"})
    out = fusion(make_inputs())
    stacked = torch.stack([out.embeddings["alpha"], out.embeddings["beta"]], 1)  # (B, 2, E)
    scores = fusion.combiner.key(stacked) @ fusion.combiner.query / math.sqrt(8)
    expected = (torch.softmax(scores, 1)[..., None] * stacked).sum(1)
    torch.testing.assert_close(out.embeddings["fused"], expected)
    assert not torch.allclose(expected, stacked.mean(1))


@pytest.mark.parametrize("combine", ["weighted", "attention"])
def test_late_learned_combinations_skip_missing_modalities(combine: str) -> None:
    fusion = build("late", {"embed_dim": 8, "combine": combine})
    inputs = make_inputs()
    alone = fusion({"alpha": inputs["alpha"]})
    torch.testing.assert_close(alone.embeddings["fused"], alone.embeddings["alpha"])
    dropped = dict(inputs, beta=Tokens(inputs["beta"].x, inputs["beta"].valid().clone()))
    assert dropped["beta"].mask is not None
    dropped["beta"].mask[1] = False  # sample 1 lost its beta (modality dropout)
    out = fusion(dropped)
    torch.testing.assert_close(out.embeddings["fused"][1], out.embeddings["alpha"][1])
    assert not torch.allclose(out.embeddings["fused"][0], out.embeddings["alpha"][0])


# -- cross-attention and co-attention ------------------------------------------------------


def test_cross_attention_every_k_layers() -> None:
    fusion = build("cross-attention", {"query": "alpha", "context": "beta", "layers": 4,
                                       "heads": 2, "every": 2})
    assert [b.cross_attn is not None for b in fusion.blocks] == [False, True, False, True]
    assert fusion.blocks[1].cross_attn.k_proj.in_features == 12
    inputs = make_inputs()
    out = fusion(inputs)
    assert out.tokens["fused"].x.shape == (3, 5, 16)
    assert out.tokens["alpha"] is inputs["alpha"] and out.tokens["beta"] is inputs["beta"]
    assert set(out.embeddings) == {"alpha", "beta", "fused"}
    assert "fused" not in fusion({"alpha": inputs["alpha"]}).embeddings


@pytest.mark.parametrize(("params", "message"), [
    ({"query": "alpha", "context": "alpha", "layers": 1, "heads": 2}, "different"),
    ({"query": "alpha", "context": "gamma", "layers": 1, "heads": 2}, "unknown modalities"),
    ({"query": "alpha", "context": "beta", "layers": 1, "heads": 2, "every": 2}, "exceeds"),
])
def test_cross_attention_config_errors(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build("cross-attention", params)


def test_cross_attention_scores_text_over_image() -> None:
    params = {"query": "text", "context": "image", "layers": 12, "heads": 12}
    cost = cost_of("cross-attention", params, {"image": Shape(196, 768),
                                               "text": Shape(128, 768)})
    assert cost.attention_scores == 25_088  # 128 text tokens x 196 patches


def test_co_attention_product_and_pass_through() -> None:
    fusion = build("co-attention", {"layers": 1, "heads": 2, "combine": "product"},
                   {"a": 8, "b": 8})
    out = fusion(make_inputs({"a": 8, "b": 8}))
    torch.testing.assert_close(out.embeddings["fused"], out.embeddings["a"] * out.embeddings["b"])
    three = {"alpha": 4, "beta": 8, "gamma": 8}
    fusion = build("co-attention", {"layers": 1, "heads": 2, "modalities": ["beta", "gamma"]},
                   three)
    inputs = make_inputs(three)
    out = fusion(inputs)
    assert out.tokens["alpha"] is inputs["alpha"]
    assert not torch.allclose(out.tokens["beta"].x, inputs["beta"].x)
    assert fusion.embedding_widths == {"alpha": 4, "beta": 8, "gamma": 8, "fused": 16}


@pytest.mark.parametrize(("params", "widths", "message"), [
    ({"combine": "product"}, None, "equal widths"),
    ({}, {"a": 8, "b": 8, "c": 8}, "needs two modalities"),
    ({"modalities": ["a", "a"]}, {"a": 8, "b": 8}, "two different"),
])
def test_co_attention_config_errors(params: dict[str, Any], widths: dict[str, int] | None,
                                    message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build("co-attention", {"layers": 1, "heads": 2, **params}, widths)


# -- bottleneck ----------------------------------------------------------------------------


def test_bottleneck_tokens_are_dropped_from_the_outputs() -> None:
    fusion = build("bottleneck", {"width": 8, "layers": 2, "fusion_layer": 0,
                                  "num_bottlenecks": 3, "heads": 2})
    assert fusion.bottleneck is not None and fusion.bottleneck.shape == (3, 8)
    out = fusion(make_inputs())
    assert {m: tuple(t.x.shape) for m, t in out.tokens.items()} == {
        "alpha": (3, 5, 8), "beta": (3, 8, 8)}
    torch.testing.assert_close(out.embeddings["fused"],
                               (out.embeddings["alpha"] + out.embeddings["beta"]) / 2)
    cost = cost_of("bottleneck", {"width": 8, "layers": 2, "fusion_layer": 0,
                                  "num_bottlenecks": 3, "heads": 2}, {
        "alpha": Shape(5, 16), "beta": Shape(8, 12)})
    assert cost.attention_scores == (8 + 3) ** 2


@pytest.mark.parametrize("params", [{"num_bottlenecks": 0}, {"fusion_layer": 2}])
def test_bottleneck_without_fusion_has_no_tokens(params: dict[str, Any]) -> None:
    fusion = build("bottleneck", {"width": 8, "layers": 2, "heads": 2, **params})
    assert fusion.bottleneck is None


def test_bottleneck_exchange_averages_over_present_modalities() -> None:
    fusion = build("bottleneck", {"width": 8, "layers": 2, "heads": 2})
    copies = {"alpha": torch.ones(3, 2, 8), "beta": torch.full((3, 2, 8), 3.0)}
    present = {"alpha": torch.tensor([True, True, False]),
               "beta": torch.tensor([True, False, False])}
    shared = fusion.exchange(copies, present)
    assert shared["alpha"] is shared["beta"]
    assert shared["alpha"][:, 0, 0].tolist() == [2.0, 1.0, 2.0]  # none present: plain mean


def test_bottleneck_config_errors() -> None:
    with pytest.raises(ValueError, match="exceeds layers"):
        build("bottleneck", {"width": 8, "layers": 1, "fusion_layer": 2, "heads": 2})
    with pytest.raises(ValueError, match="a single fusion layer exchanges nothing"):
        build("bottleneck", {"width": 8, "layers": 3, "fusion_layer": 2, "heads": 2})
    build("bottleneck", {"width": 8, "layers": 3, "fusion_layer": 2, "num_bottlenecks": 0,
                         "heads": 2})  # no tokens: nothing to exchange, nothing to warn of
    with pytest.raises(ValueError, match="set width"):
        build("bottleneck", {"layers": 2, "heads": 2})
    with pytest.raises(ValueError, match="use layers >= 2"):
        build("bottleneck", {"width": 8, "layers": 1, "heads": 2})


# -- perceiver and the perceiver resampler -------------------------------------------------


def test_perceiver_pads_each_modality_with_its_own_channels() -> None:
    fusion = build("perceiver", {"width": 8, "num_latents": 2, "layers": 1, "heads": 2,
                                 "min_padding": 3})
    assert fusion.input_width == 19
    assert {m: p.shape[0] for m, p in fusion.padding.items()} == {"alpha": 3, "beta": 7}


@pytest.mark.parametrize("length", [8, 40])
def test_resampler_gives_a_fixed_number_of_tokens(length: int) -> None:
    fusion = build("perceiver-resampler", {"modality": "beta", "num_latents": 3, "layers": 1,
                                           "heads": 2})
    inputs = make_inputs(lengths={"alpha": 5, "beta": length})
    out = fusion(inputs)
    assert out.tokens["beta"].x.shape == (3, 3, 12) and out.tokens["beta"].mask is None
    torch.testing.assert_close(out.embeddings["beta"], out.tokens["beta"].x.mean(1))
    assert out.tokens["alpha"] is inputs["alpha"]
    cost = cost_of("perceiver-resampler", {"modality": "beta", "num_latents": 3, "layers": 1,
                                           "heads": 2}, {"beta": Shape(length, 12)})
    assert cost.attention_scores == 3 * (length + 3)


def test_resampler_time_embeddings_mark_frames() -> None:
    params = {"modality": "beta", "width": 8, "num_latents": 2, "layers": 1, "heads": 2,
              "time_embeddings": 3, "frame_tokens": 4}
    fusion = build("perceiver-resampler", params).eval()
    assert fusion.resampler.time.shape == (3, 8) and fusion.resampler.projection is not None
    inputs = make_inputs()  # beta: 8 tokens = 2 frames of 4
    before = fusion(inputs).embeddings["beta"]
    # a non-constant shift: a LayerNorm removes a constant one, so only rounding would show it
    shift = torch.randn(8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fusion.resampler.time[2] += shift  # frame 2 does not exist in this input
    torch.testing.assert_close(fusion(inputs).embeddings["beta"], before)
    with torch.no_grad():
        fusion.resampler.time[1] += shift
    after = fusion(inputs).embeddings["beta"]
    # embeddings (B, D): samples 0 and 1 have real tokens in frame 1, sample 2 only in frame 0
    assert (after[:2] - before[:2]).abs().amax(dim=1).min() > 1e-2
    torch.testing.assert_close(after[2], before[2])
    with pytest.raises(ValueError, match="frames of 4 tokens"):
        fusion(make_inputs(lengths={"beta": 6}))


@pytest.mark.parametrize(("params", "message"), [
    ({"time_embeddings": 2}, "needs frame_tokens"),
    ({"pooling": {"beta": "cls"}}, "mean of its latents"),
    ({"modality": "gamma"}, "unknown modalities"),
])
def test_resampler_config_errors(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build("perceiver-resampler", {"modality": "beta", "num_latents": 2, "layers": 1,
                                      "heads": 2, **params})


# -- gated cross-attention -----------------------------------------------------------------


def test_gated_block_formula() -> None:
    torch.manual_seed(0)
    block = GatedCrossAttentionBlock(width=8, visual_width=6, heads=2, kernels=KERNELS)
    x, visual = torch.randn(2, 4, 8), torch.randn(2, 3, 6)
    assert torch.equal(block(x, visual), x)  # tanh(0) = 0: exactly the identity
    block(x, visual).sum().backward()
    assert block.attn_gate.grad is not None and block.attn_gate.grad.abs() > 0
    assert block.attn.q_proj.weight.grad is not None
    assert torch.count_nonzero(block.attn.q_proj.weight.grad) == 0
    with torch.no_grad():
        block.attn_gate.fill_(0.5)
        block.ff_gate.fill_(-1.0)
        mid = x + math.tanh(0.5) * block.attn(block.attn_norm(x), visual)
        expected = mid + math.tanh(-1.0) * block.ff(block.ff_norm(mid))
        torch.testing.assert_close(block(x, visual), expected)


def test_gated_xattn_blocks_sit_before_every_kth_layer() -> None:
    fusion = build("gated-xattn", {"text": "alpha", "visual": "beta", "lm_layers": 4,
                                   "heads": 2, "every": 2})
    assert sorted(fusion.xattn) == ["1", "3"]
    out = fusion(make_inputs())
    assert out.tokens["fused"].x.shape == (3, 5, 16)
    alone = fusion({"alpha": make_inputs()["alpha"]})
    assert alone.tokens["fused"].x.shape == (3, 5, 16) and "beta" not in alone.embeddings


def test_gated_xattn_resamples_the_visual_tokens() -> None:
    fusion = build("gated-xattn", {"text": "alpha", "visual": "beta", "lm_layers": 1,
                                   "heads": 2, "resampler": {"num_latents": 2, "layers": 1,
                                                             "heads": 2}})
    out = fusion(make_inputs())
    assert out.tokens["beta"].x.shape == (3, 2, 12)
    assert fusion.xattn["0"].attn.k_proj.in_features == 12


def test_gated_xattn_frozen_lm_is_left_unchanged_by_training() -> None:
    fusion = build("gated-xattn", {"text": "alpha", "visual": "beta", "lm_layers": 2,
                                   "heads": 2, "resampler": {"num_latents": 2, "layers": 1,
                                                             "heads": 2}})
    assert all(not p.requires_grad for p in fusion.lm.parameters())
    trainable = [n for n, p in fusion.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith(("xattn.", "resampler.")) for n in trainable)
    lm_before = {n: p.detach().clone() for n, p in fusion.lm.named_parameters()}
    gates_before = [b.attn_gate.item() for b in fusion.xattn.values()]
    optimizer = torch.optim.AdamW(fusion.parameters(), lr=0.1, weight_decay=0.1)
    for _ in range(2):
        out = fusion(make_inputs())
        (out.tokens["fused"].x * torch.randn_like(out.tokens["fused"].x)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.equal(p, lm_before[n]) for n, p in fusion.lm.named_parameters())
    assert all(p.grad is None for p in fusion.lm.parameters())
    assert [b.attn_gate.item() for b in fusion.xattn.values()] != gates_before


def test_gated_xattn_lm_trains_when_not_frozen() -> None:
    fusion = build("gated-xattn", {"text": "alpha", "visual": "beta", "lm_layers": 1,
                                   "heads": 2, "freeze_lm": False})
    assert all(p.requires_grad for p in fusion.parameters())


def test_gated_xattn_config_errors() -> None:
    with pytest.raises(ValueError, match="different"):
        build("gated-xattn", {"text": "alpha", "visual": "alpha", "lm_layers": 1, "heads": 2})
    with pytest.raises(ValueError, match="exceeds"):
        build("gated-xattn", {"text": "alpha", "visual": "beta", "lm_layers": 1, "heads": 2,
                              "every": 3})


def test_gated_xattn_cost_counts_frozen_parameters_and_scores() -> None:
    params = {"text": "text", "visual": "image", "lm_layers": 4, "heads": 8, "every": 2,
              "resampler": {"num_latents": 64, "layers": 2, "heads": 8}}
    shapes = {"image": Shape(196, 256), "text": Shape(128, 512)}
    cost = cost_of("gated-xattn", params, shapes)
    fusion = build("gated-xattn", params, {"image": 256, "text": 512})
    assert cost.params == n_params(fusion)
    assert cost.attention_scores == max(128 * 128, 128 * 64, 64 * (196 + 64))


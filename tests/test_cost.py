"""Analytic costs (mmcore.cost, each component's ``cost=``) against the built modules.

For every registered component with a cost function, built from its ``tiny`` config in the
conformance suite's standard context: the analytic parameter count equals the built
module's exactly, and the analytic forward FLOPs are within a few per cent of what
``torch.utils.flop_counter.FlopCounterMode`` counts on a forward pass. Both count matrix
products, convolutions and attention at 2 FLOPs per multiply-add and leave out softmax,
norms, activations and other element-wise work; attention runs through the reference
kernel (plain matmuls) so every score is counted. Objectives are checked for parameters
only: their FLOPs depend on the batch (a contrastive loss compares every pair in it).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

import mmcore
from mmcore.analysis import analyse
from mmcore.builder import BuildContext, build
from mmcore.contract import FusionOutput, Tokens
from mmcore.cost import (
    Cost,
    CostContext,
    Shape,
    attention,
    linear,
    training_memory,
    transformer_stack,
)
from mmcore.kernels import Hardware, select_kernels
from mmcore.plugins import get_registry
from mmcore.registry import Registry
from mmcore.summary import count_parameters, summarize
from mmcore.testing import (
    EMBEDDING_WIDTH,
    ENCODER_WIDTH,
    HEAD_NAME,
    MODALITY_WIDTHS,
    NUM_CLASSES,
)

REFERENCE = {"attention": "reference", "cross_attention": "reference"}
BATCH = 2
ENCODER_TOKENS = 6
FUSION_TOKENS = {"alpha": 5, "beta": 7}
FLOP_TOLERANCE = 0.03  # relative
MODULE_KINDS = ("tokenizer", "encoder", "fusion", "head", "objective")

TINY_SPEC = """\
name: cost-tiny
modalities:
  image:
    preprocessor: {type: image, size: 16}
    tokenizer: {type: patch-embedding, image_size: 16, patch_size: 8, width: 16}
    encoder: {type: vit, layers: 2, heads: 2}
  text:
    preprocessor: {type: byte-text, context_length: 16}
    tokenizer: {type: token-embedding, vocab_size: 259, width: 16, context_length: 16}
    encoder: {type: text-transformer, layers: 1, heads: 2, causal: true}
fusion: {type: late, embed_dim: 8, pooling: {image: cls, text: eot}}
objectives:
  contrastive: {type: contrastive, pairs: [[image, text]]}
kernels: {attention: reference, cross_attention: reference}
"""


def _kernels() -> Any:
    return select_kernels(REFERENCE, Hardware())


def _cases(kinds: tuple[str, ...]) -> list[Any]:
    registry = get_registry()
    return [pytest.param(kind, entry.name, id=f"{kind}:{entry.name}")
            for kind in kinds for entry in registry.list(kind) if entry.cost is not None]


def _widths() -> dict[str, int]:
    return {n: EMBEDDING_WIDTH for n in [*MODALITY_WIDTHS, "fused"]}


def _contexts(kind: str, params: Any) -> tuple[BuildContext, CostContext]:
    """The conformance suite's build context for ``kind`` and the matching cost context."""
    kernels = _kernels()
    shapes = {m: Shape(FUSION_TOKENS[m], w) for m, w in MODALITY_WIDTHS.items()}
    if kind == "tokenizer":
        return BuildContext(kernels=kernels, modality="alpha"), CostContext()
    if kind == "encoder":
        width = getattr(params, "width", None) or ENCODER_WIDTH
        return (BuildContext(kernels=kernels, modality="alpha", in_width=width),
                CostContext(in_shape=Shape(ENCODER_TOKENS, width)))
    if kind == "fusion":
        return (BuildContext(kernels=kernels, widths=dict(MODALITY_WIDTHS)),
                CostContext(shapes=shapes))
    heads = {HEAD_NAME: NUM_CLASSES} if kind == "objective" else {}
    return (BuildContext(kernels=kernels, embedding_widths=_widths(), heads=heads),
            CostContext(shapes=shapes, embedding_widths=_widths(), heads=heads))


def _built_and_cost(kind: str, name: str) -> tuple[Any, Cost]:
    entry = get_registry().get(kind, name)
    assert entry.tiny is not None, f"{kind} {name!r} has no tiny config"
    params = entry.config.model_validate(entry.tiny)
    build_ctx, cost_ctx = _contexts(kind, params)
    torch.manual_seed(0)
    return entry.factory(params, build_ctx), entry.cost(params, cost_ctx)


@pytest.mark.parametrize(("kind", "name"), _cases(MODULE_KINDS))
def test_analytic_parameters_equal_the_built_module(kind: str, name: str) -> None:
    module, cost = _built_and_cost(kind, name)
    assert cost.params == count_parameters(module)[0]


@pytest.mark.parametrize(("kind", "name"), _cases(("preprocessor",)))
def test_preprocessors_cost_nothing(kind: str, name: str) -> None:
    entry = get_registry().get(kind, name)
    params = entry.config.model_validate(entry.tiny or {}) if entry.tiny is not None else None
    cost = entry.cost(params, CostContext())
    assert (cost.params, cost.flops, cost.activations) == (0, 0, 0)


def _inputs(kind: str, name: str, module: Any) -> tuple[Any, ...]:
    """A full batch (no padding) of the shapes the cost context describes."""
    entry = get_registry().get(kind, name)
    generator = torch.Generator().manual_seed(1)
    if entry.example is not None:
        return (entry.example(module, BATCH, generator),)
    if kind == "encoder":
        width = module.out_width
        return (Tokens(torch.randn(BATCH, ENCODER_TOKENS, width, generator=generator)),)
    tokens = {m: Tokens(torch.randn(BATCH, FUSION_TOKENS[m], w, generator=generator))
              for m, w in MODALITY_WIDTHS.items()}
    if kind == "fusion":
        return (tokens,)
    embeddings = {n: torch.randn(BATCH, w, generator=generator) for n, w in _widths().items()}
    return (FusionOutput(tokens, embeddings),)


def _counted_flops(module: Any, args: tuple[Any, ...]) -> int:
    module.eval()  # with autograd on: the counter's module hooks need it (forward only)
    with FlopCounterMode(display=False) as counter:
        module(*args)
    return int(counter.get_total_flops())


@pytest.mark.parametrize(("kind", "name"), _cases(("tokenizer", "encoder", "fusion", "head")))
def test_analytic_flops_match_the_flop_counter(kind: str, name: str) -> None:
    module, cost = _built_and_cost(kind, name)
    inputs = _inputs(kind, name, module)
    if kind == "fusion" and get_registry().get(kind, name).example is not None:
        cost = _cost_of_example(name, inputs[0])  # the example's own token counts
    measured = _counted_flops(module, inputs) / BATCH
    assert cost.flops == pytest.approx(measured, rel=FLOP_TOLERANCE, abs=1)


def _cost_of_example(name: str, tokens: dict[str, Tokens]) -> Cost:
    """A fusion's analytic cost for the shapes of its own example inputs."""
    entry = get_registry().get("fusion", name)
    params = entry.config.model_validate(entry.tiny)
    shapes = {m: Shape(int(t.x.shape[1]), int(t.x.shape[2])) for m, t in tokens.items()}
    return entry.cost(params, CostContext(shapes=shapes))


# ----------------------------------------------------------------------------- helpers


def test_helpers_count_what_the_layers_hold() -> None:
    assert linear(3, 4, 5) == Cost(params=25, flops=2 * 3 * 4 * 5, activations=12)
    assert linear(3, 4, 5, bias=False).params == 20
    att = attention(4, 6, 8, heads=2, kv_width=10)
    assert att.params == 2 * (8 * 8 + 8) + 2 * (10 * 8 + 8)
    assert att.flops == 2 * (4 * 8 * 8 * 2 + 6 * 10 * 8 * 2) + 2 * 2 * 4 * 6 * 8
    assert att.attention_scores == 24
    stack = transformer_stack(10, 16, 3, 2, final_norm=True, pre_norm=True)
    assert stack.params == 3 * (12 * 16 * 16 + 13 * 16) + 2 * 2 * 16
    assert stack.out == Shape(10, 16)


def test_training_memory_counts_adamw_states_and_activations() -> None:
    fp32 = training_memory(1000, 50, batch_size=4, dtype="fp32")
    assert (fp32.weights, fp32.gradients, fp32.optimizer, fp32.activations) == (
        4000, 4000, 8000, 4 * 50 * 4)
    bf16 = training_memory(1000, 50, batch_size=4, dtype="bf16")
    assert (bf16.weights, bf16.gradients, bf16.optimizer, bf16.activations) == (
        6000, 2000, 8000, 2 * 50 * 4)  # fp32 master + bf16 copy; bf16 grads; fp32 moments
    assert bf16.total == fp32.total - 400
    with pytest.raises(ValueError, match="unknown dtype"):
        training_memory(1, 1, batch_size=1, dtype="int8")


# ----------------------------------------------------------------------------- whole models


def test_clip_vit_b_32_analytic_count_is_exact() -> None:
    summary = summarize(mmcore.load_spec("clip-vit-b-32"))
    assert summary.cost is not None
    assert not summary.cost.partial
    assert summary.cost.parameters == summary.parameters == 151_277_313
    for row in summary.cost.components:
        assert row.built_parameters in (None, row.parameters), row.path
    assert summary.cost.tokens == {"image": 50, "text": 77}
    encoder = next(r for r in summary.cost.components if r.path == "modalities.image.encoder")
    assert encoder.attention_scores == 50 * 50


def test_model_flops_match_the_flop_counter() -> None:
    spec = mmcore.load_spec(yaml.safe_load(TINY_SPEC))
    model = build(spec).eval()
    cost = analyse(spec)
    images = torch.rand(BATCH, 3, 16, 16)
    batch = {"image": images,
             "text": {"ids": torch.randint(0, 259, (BATCH, 16)),
                      "mask": torch.ones(BATCH, 16, dtype=torch.bool)}}
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(batch)
    measured = counter.get_total_flops() / BATCH
    assert cost.flops == pytest.approx(measured, rel=FLOP_TOLERANCE)
    assert cost.parameters == count_parameters(model)[0]


def test_batch_size_and_dtype_scale_memory() -> None:
    spec = mmcore.load_spec(yaml.safe_load(TINY_SPEC))
    one = analyse(spec, batch_size=1, dtype="fp32")
    eight = analyse(spec, batch_size=8, dtype="bf16")
    assert eight.flops == one.flops  # per sample
    assert eight.memory["activations"] == one.memory["activations"] * 8 // 2
    assert one.memory["weights"] == 4 * one.parameters
    assert eight.memory["total"] == (16 * one.parameters + eight.memory["activations"])


def _without_cost(kind: str, name: str) -> Registry:
    """The plugin registry, with ``name``'s cost function (and example input, so it cannot
    be measured on the meta device either) removed."""
    registry = Registry()
    for entry in get_registry().list():
        drop = entry.kind == kind and entry.name == name
        registry.add(dataclasses.replace(entry, cost=None, example=None) if drop else entry)
    return registry


def test_a_component_without_cost_is_na_and_the_totals_partial() -> None:
    spec = mmcore.load_spec(yaml.safe_load(TINY_SPEC))
    full = analyse(spec)
    cost = analyse(spec, _without_cost("tokenizer", "patch-embedding"))
    rows = {r.path: r for r in cost.components}
    assert cost.partial and not full.partial
    assert rows["modalities.image.tokenizer"].parameters is None
    assert "registers no cost function" in rows["modalities.image.tokenizer"].note
    # the encoder after it cannot know its input shape, nor can the fusion
    assert rows["modalities.image.encoder"].parameters is None
    assert "output shape is unknown" in rows["modalities.image.encoder"].note
    assert rows["fusion"].parameters is None
    assert cost.tokens["image"] is None and cost.tokens["text"] == 16
    text = [r for r in cost.components if r.path.startswith("modalities.text")]
    assert cost.parameters == sum(r.parameters or 0 for r in text)


def test_inspect_prints_na_and_partial_totals(capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Any) -> None:
    from mmcore import meta_cost, plugins
    from mmcore.cli import main

    def unmeasurable(*args: Any) -> None:
        raise RuntimeError("cannot run on the meta device")

    registry = _without_cost("encoder", "vit")
    monkeypatch.setattr(plugins, "get_registry", lambda: registry)
    monkeypatch.setattr(meta_cost, "measured_cost", unmeasurable)
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SPEC, encoding="utf-8")
    assert main(["inspect", str(path), "--batch-size", "4", "--dtype", "bf16"]) == 0
    out = capsys.readouterr().out
    encoder = next(line for line in out.splitlines()
                   if line.startswith("modalities.image.encoder"))
    assert "n/a" in encoder
    total = next(line for line in out.splitlines() if line.startswith("total"))
    assert "(partial)" in total
    assert "encoder 'vit' registers no cost function" in out
    assert "activations (batch 4, bf16)" in out
    assert "2 FLOPs per multiply-add" in out

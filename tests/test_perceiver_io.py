"""Perceiver IO (plugins/mmcore_perceiver): query builders, query decoders reading the
latents through the contract, per-query objectives, and the errors for queries that do
not fit the target."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mmcore.builder import BuildContext, build
from mmcore.contract import FusionOutput, ModelOutput, Tokens
from mmcore.errors import SpecError
from mmcore.kernels import KernelSet
from mmcore.spec import load_spec
from mmcore_perceiver.decoders import QueryDecoder
from mmcore_perceiver.queries import build_query, fourier_features, linear_positions

CTX = BuildContext(kernels=KernelSet())


def query(**ref: Any) -> Any:
    torch.manual_seed(0)
    return build_query(ref, CTX)


# -- query builders -----------------------------------------------------------------------


def test_learned_positions_cover_a_grid() -> None:
    q = query(type="learned-positions", shape=[3, 5], width=4)
    assert (q.num_queries, q.out_width, q.shape) == (15, 4, (3, 5))
    out = q(2)
    assert out.shape == (2, 15, 4)
    torch.testing.assert_close(out[0], q.weight)
    torch.testing.assert_close(out[1], q.weight)


def test_fourier_features_by_hand() -> None:
    """1-D grid of 3 cells, 2 bands, resolution 4: bands are linspace(1, 4/2, 2) = (1, 2)."""
    q = query(type="fourier-positions", shape=[3], num_bands=2, max_resolution=[4])
    x = torch.tensor([-1.0, 0.0, 1.0])
    expected = torch.stack([x, torch.sin(math.pi * x), torch.sin(2 * math.pi * x),
                            torch.cos(math.pi * x), torch.cos(2 * math.pi * x)], dim=1)
    assert q.out_width == 5 and q.num_queries == 3
    torch.testing.assert_close(q(1)[0], expected)


def test_fourier_2d_matches_transformers_layout() -> None:
    modeling = pytest.importorskip("transformers.models.perceiver.modeling_perceiver")
    pos = linear_positions((4, 6))  # (24, 2), row-major
    ours = fourier_features(pos, 5, (7, 9), concat_pos=True, sine_only=False)
    theirs = modeling.generate_fourier_features(pos[None], num_bands=5, max_resolution=(7, 9),
                                                concat_pos=True, sine_only=False)[0]
    ref_pos = modeling.build_linear_positions((4, 6)).reshape(-1, 2)
    torch.testing.assert_close(pos, ref_pos)
    torch.testing.assert_close(ours, theirs)
    assert ours.shape == (24, 2 + 2 * 2 * 5)


def test_fourier_projection_and_concat_with_a_task_embedding() -> None:
    q = query(type="concat", parts=[
        {"type": "fourier-positions", "shape": [2, 2], "num_bands": 3, "width": 6},
        {"type": "task-embedding", "width": 4},
        {"type": "modality-embedding", "width": 2}])
    assert (q.num_queries, q.out_width, q.shape) == (4, 12, (2, 2))
    out = q(3)  # (B, Q, 6 + 4 + 2)
    task = q.parts[1].weight[0]
    for cell in range(4):  # the one-query parts repeat beside every position
        torch.testing.assert_close(out[1, cell, 6:10], task)
    assert (out[0, 0, :6] - out[0, 3, :6]).abs().max() > 1e-3  # positions differ


def test_concat_parts_must_agree_on_the_count() -> None:
    with pytest.raises(ValueError, match=r"parts.1 gives 6 queries but parts.0 gives 4"):
        query(type="concat", parts=[{"type": "learned", "num_queries": 4, "width": 2},
                                    {"type": "learned-positions", "shape": [2, 3], "width": 2}])


def test_unknown_query_type_suggests_a_near_name() -> None:
    with pytest.raises(ValueError, match="fourier-positions"):
        query(type="fourier-position", shape=[4], num_bands=2)


# -- decoders through the contract --------------------------------------------------------


def decoder(kind: str, **params: Any) -> QueryDecoder:
    from mmcore.plugins import get_registry

    entry = get_registry().get("head", kind)
    torch.manual_seed(0)
    ctx = BuildContext(kernels=KernelSet(), embedding_widths={"fused": 8, "latents": 8})
    module = entry.factory(entry.config.model_validate(params), ctx)
    assert isinstance(module, QueryDecoder)
    return module.eval()


def latents(batch: int = 2, m: int = 5) -> FusionOutput:
    x = torch.randn(batch, m, 8, generator=torch.Generator().manual_seed(3))
    return FusionOutput(latents=Tokens(x))


def test_per_query_outputs_have_one_row_per_query() -> None:
    head = decoder("query-classifier", num_classes=7,
                   queries={"type": "fourier-positions", "shape": [4, 4], "num_bands": 2})
    assert head(latents()).shape == (2, 16, 7)
    regressor = decoder("query-regressor", outputs=3,
                        queries={"type": "learned", "num_queries": 5, "width": 6})
    assert regressor(latents()).shape == (2, 5, 3)
    pooled = decoder("pooled-query-classifier", num_classes=4)
    assert pooled(latents()).shape == (2, 4)


def test_each_query_reads_only_the_latents_of_its_own_item() -> None:
    head = decoder("query-classifier", num_classes=3,
                   queries={"type": "learned-positions", "shape": [6], "width": 8}, heads=2)
    fused = latents(batch=3)
    out = head(fused)
    changed = fused.latents.x.clone()
    changed[1] += torch.randn(5, 8, generator=torch.Generator().manual_seed(4))
    again = head(FusionOutput(latents=Tokens(changed)))
    torch.testing.assert_close(out[[0, 2]], again[[0, 2]])
    assert (out[1] - again[1]).abs().max() > 1e-3


def test_decoder_cost_is_linear_in_queries() -> None:
    """FLOPs of decoding Q queries over M latents: an affine function of Q."""
    flops = []
    for side in (4, 8, 16):
        head = decoder("query-classifier", num_classes=3,
                       queries={"type": "learned-positions", "shape": [side, side], "width": 8})
        with FlopCounterMode(display=False) as counter:
            head(latents(batch=1))
        flops.append(counter.get_total_flops())
    q = [16, 64, 256]
    slope = (flops[1] - flops[0]) / (q[1] - q[0])
    assert flops[2] == flops[0] + slope * (q[2] - q[0])


def test_a_fusion_without_latents_is_refused_at_build_and_at_run() -> None:
    from mmcore.plugins import get_registry

    entry = get_registry().get("head", "query-classifier")
    params = entry.config.model_validate(
        {"num_classes": 2, "queries": {"type": "learned", "num_queries": 2, "width": 4}})
    ctx = BuildContext(kernels=KernelSet(), embedding_widths={"fused": 8})
    with pytest.raises(ValueError, match="latent-array fusion"):
        entry.factory(params, ctx)
    head = decoder("query-classifier", num_classes=2,
                   queries={"type": "learned", "num_queries": 2, "width": 4})
    with pytest.raises(ValueError, match="fusion type perceiver"):
        head(FusionOutput(embeddings={"fused": torch.zeros(1, 8)}))


# -- specs: the count check at validate time, objectives ----------------------------------


def seg_spec(queries: dict[str, Any], shape: list[int] | None = None) -> dict[str, Any]:
    head: dict[str, Any] = {"type": "query-classifier", "num_classes": 3, "queries": queries}
    if shape is not None:
        head["shape"] = shape
    return {
        "name": "seg-test",
        "modalities": {"image": {"tokenizer": {"type": "patch-embedding", "image_size": 8,
                                               "patch_size": 4, "width": 8,
                                               "cls_token": False}}},
        "fusion": {"type": "perceiver", "width": 8, "num_latents": 3, "layers": 1,
                   "heads": 2, "num_outputs": 0},
        "heads": {"seg": head},
        "objectives": {"seg": {"type": "per-query-classification", "head": "seg"}},
    }


def test_query_count_that_does_not_fit_the_shape_fails_validation() -> None:
    spec = load_spec(seg_spec({"type": "fourier-positions", "shape": [4, 4], "num_bands": 2},
                              shape=[8, 8]))
    with pytest.raises(SpecError) as err:
        build(spec, device="meta")
    text = str(err.value)
    assert "heads.seg" in text and "gives 16 queries" in text and "needs 64" in text


def test_a_bad_nested_query_param_names_its_path() -> None:
    spec = load_spec(seg_spec({"type": "learned-positions", "shape": [0, 4], "width": 4}))
    with pytest.raises(SpecError, match=r"heads.seg.*queries.*shape"):
        build(spec, device="meta")


def test_segmentation_spec_trains_end_to_end_through_the_contract() -> None:
    torch.manual_seed(0)
    model = build(load_spec(seg_spec({"type": "fourier-positions", "shape": [8, 8],
                                      "num_bands": 3, "width": 8}, shape=[8, 8])))
    batch = {"image": torch.randn(2, 3, 8, 8), "mask": torch.randint(0, 3, (2, 8, 8))}
    out = model(batch)
    assert out.heads["seg"].shape == (2, 64, 3)
    terms = model.loss(batch)
    expected = torch.nn.functional.cross_entropy(out.heads["seg"].reshape(-1, 3),
                                                 batch["mask"].reshape(-1))
    torch.testing.assert_close(terms["seg/loss"], expected)
    hits = (out.heads["seg"].argmax(-1) == batch["mask"].reshape(2, 64)).float().mean()
    torch.testing.assert_close(terms["seg/accuracy"], hits)


def test_target_that_does_not_fit_the_queries_is_named() -> None:
    model = build(load_spec(seg_spec({"type": "learned-positions", "shape": [4, 4],
                                      "width": 4})))
    batch = {"image": torch.randn(2, 3, 8, 8), "mask": torch.randint(0, 3, (2, 8, 8))}
    with pytest.raises(ValueError, match=r"target 'mask' has shape \(2, 8, 8\): 64 cells per "
                                         r"item, but head 'seg' gives 16 queries"):
        model.loss(batch)


def test_per_query_objectives_by_hand() -> None:
    from mmcore.plugins import get_registry

    registry = get_registry()
    ctx = BuildContext(kernels=KernelSet(), heads={"h": 2})

    def objective(name: str, **params: Any) -> Any:
        entry = registry.get("objective", name)
        return entry.factory(entry.config.model_validate({"head": "h", **params}), ctx)

    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # (1, 3, 2)
    target = torch.tensor([[0, 0, -100]])  # the third query is not scored
    terms = objective("per-query-classification", target="t")(
        ModelOutput({}, {}, heads={"h": logits}), {"t": target})
    expected = (-torch.log_softmax(logits[0, 0], 0)[0] - torch.log_softmax(logits[0, 1], 0)[0]) / 2
    torch.testing.assert_close(terms["loss"], expected)
    torch.testing.assert_close(terms["accuracy"], torch.tensor(0.5))
    values = torch.tensor([[[1.0, 2.0], [3.0, 5.0]]])  # (1, Q=2, K=2)
    truth = torch.tensor([[[1.0, 0.0], [3.0, 1.0]]])
    regression = objective("per-query-regression")(
        ModelOutput({}, {}, heads={"h": values}), {"target": truth})
    torch.testing.assert_close(regression["loss"], torch.tensor((4.0 + 16.0) / 4))


def test_the_fusion_exposes_its_latents() -> None:
    model = build(load_spec(seg_spec({"type": "learned", "num_queries": 64, "width": 4})))
    fused = model.fusion(model.encode({"image": torch.randn(2, 3, 8, 8)}))
    assert fused.latents is not None and fused.latents.x.shape == (2, 3, 8)
    torch.testing.assert_close(fused.embeddings["latents"], fused.latents.x.mean(1))

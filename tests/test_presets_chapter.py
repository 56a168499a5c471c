"""The chapter presets (plugins/mmcore_presets): their figures, exactly, and that they build.

Deep Learning and Transformers textbook, ch. 18 (Multimodal Transformers): the multimodal
video transformer counts 154,610,688 parameters, a Whisper encoder layer of width 1024
12,587,008 (weights and LayerNorms, no biases), and 196 patches against 128 tokens give
25,088 cross-attention scores per head, against 324^2 = 104,976 for early fusion.
"""

from __future__ import annotations

import json
from functools import cache

import pytest
import torch

import mmcore
from mmcore.builder import build, validate
from mmcore.cli import main
from mmcore.errors import SpecError
from mmcore.plugins import get_registry
from mmcore.spec import load_spec
from mmcore.summary import (
    ModelSummary,
    bias_parameters,
    compare_fusions,
    comparison_specs,
    count_parameters,
    summarize,
)

PRESETS = ["video-transformer", "fusion-compare", "whisper-large-encoder"]


@cache
def _summary(name: str) -> ModelSummary:
    return summarize(load_spec(name))


def test_the_presets_are_registered_by_the_presets_plugin() -> None:
    for name in PRESETS:
        entry = get_registry().get("preset", name)
        assert entry.plugin == "mmcore_presets"
    assert get_registry().get("tokenizer", "feature-projection").plugin == "mmcore_presets"


@pytest.mark.parametrize("name", PRESETS)
def test_preset_validates(name: str) -> None:
    spec = load_spec(name)
    validate(spec)
    summary = _summary(name)
    assert summary.cost is not None and not summary.cost.partial
    assert summary.cost.parameters == summary.parameters  # analytic == meta build
    assert all(r.built_parameters in (None, r.parameters) for r in summary.cost.components)


def test_every_compared_fusion_builds() -> None:
    variants = comparison_specs(load_spec("fusion-compare"))
    assert list(variants) == ["early", "late", "cross-modal", "co-attention", "bottleneck",
                              "perceiver"]
    for variant in variants.values():
        validate(variant)


# ----------------------------------------------------------------------------- video transformer


def test_video_transformer_reproduces_the_chapter_count() -> None:
    summary = _summary("video-transformer")
    ref = summary.reference
    assert ref is not None
    assert ref.parameters == ref.counted == 154_610_688
    assert ref.matches
    assert ref.excluded == {"biases": 115_088, "objectives": 1}
    assert ref.full == summary.parameters == 154_725_777
    rows = {r.path: r for r in summary.cost.components} if summary.cost else {}
    assert rows["fusion"].parameters == 12 * 12_596_224 + 3 * 1024  # layers + modality vectors
    assert rows["heads.action"].parameters == 1_460_224 + 1024 + 400


def test_video_transformer_shapes_and_attention() -> None:
    summary = _summary("video-transformer")
    assert summary.cost is not None
    assert summary.cost.tokens == {"audio": 32, "text": 20, "visual": 16}
    assert summary.cost.attention_scores == 68 * 68


def test_video_transformer_trains_one_step_with_a_tiny_copy() -> None:
    """The preset's structure at a small width: forward, both losses, backward."""
    data = load_spec("video-transformer").to_dict()
    for ms in data["modalities"].values():
        ms["tokenizer"].update(width=32, length=4)
    data["fusion"].update(layers=1, heads=2)
    data["heads"]["action"].update(hidden=32)
    model = build(mmcore.load_spec(data))
    torch.manual_seed(0)
    batch = {m: torch.randn(3, 4, ms["tokenizer"]["features"])
             for m, ms in data["modalities"].items()}
    batch["label"] = torch.tensor([0, 5, 399])
    losses = model.loss(batch, model(batch))
    assert set(losses) >= {"loss"} and torch.isfinite(losses["loss"])
    losses["loss"].backward()


# ----------------------------------------------------------------------------- whisper


def test_whisper_layer_is_the_chapter_figure() -> None:
    summary = _summary("whisper-large-encoder")
    ref = summary.reference
    assert ref is not None and ref.matches
    assert (ref.layer_parameters, ref.layer_counted) == (12_587_008, 12_587_008)
    assert ref.layers == 24
    assert ref.layer_full == 12 * 1024**2 + 13 * 1024 == 12_596_224
    assert ref.layer_excluded == {"biases": 9_216}
    assert summary.tokens == {"audio": 1500}


def test_whisper_encoder_total_against_the_chapter_sum() -> None:
    """The chapter's 305,479,680 = convolutions without biases + 24 layers; mmcore's count
    without biases adds the final LayerNorm it leaves out."""
    model = build(load_spec("whisper-large-encoder"), device="meta")
    encoder = torch.nn.ModuleList([model.tokenizers["audio"], model.encoders["audio"]])
    without_biases = count_parameters(encoder)[0] - bias_parameters(encoder)
    assert without_biases == 305_479_680 + 2 * 1024


# ----------------------------------------------------------------------------- fusion compare


def test_fusion_compare_reproduces_the_chapter_scores() -> None:
    variants = {v.name: v for v in _summary("fusion-compare").compare}
    assert variants["early"].attention_scores == 324**2 == 104_976
    assert variants["cross-modal"].attention_scores == 196 * 128 == 25_088
    assert variants["late"].attention_scores is None  # no attention at all
    for variant in variants.values():
        assert variant.fusion_parameters == variant.built_fusion_parameters, variant.name
        assert not variant.partial
    assert variants["late"].fusion_flops < variants["cross-modal"].fusion_flops
    assert variants["cross-modal"].fusion_flops < variants["early"].fusion_flops


def test_inspect_fusion_compare_prints_them_side_by_side(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "fusion-compare"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("fusion comparison"):]
    early = next(line for line in table.splitlines() if line.startswith("early "))
    cross = next(line for line in table.splitlines() if line.startswith("cross-modal "))
    assert "104,976" in early and "25,088" in cross
    assert "42,530,304" in early  # the fusion's own parameters


def test_inspect_json_has_the_reference(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "video-transformer", "--json", "--batch-size", "4",
                 "--dtype", "bf16"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["reference"]["parameters"] == data["reference"]["counted"] == 154_610_688
    assert data["reference"]["matches"] is True
    assert data["cost"]["batch_size"] == 4 and data["cost"]["dtype"] == "bf16"
    assert data["cost"]["memory"]["optimizer"] == 8 * data["cost"]["parameters"]


def test_inspect_text_explains_the_difference(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "whisper-large-encoder"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "one layer of" in line)
    assert "12,587,008" in line and "matches" in line and "12,596,224" in line
    assert "+9,216 biases" in line


def test_a_malformed_reference_is_a_spec_error() -> None:
    data = load_spec("whisper-large-encoder").to_dict()
    data["metadata"]["reference"]["layer"] = "fusion"
    with pytest.raises(SpecError, match="names no component with repeated layers"):
        summarize(mmcore.load_spec(data))
    data["metadata"]["reference"] = {"source": "x", "parameters": 1, "exclude": ["biases"]}
    with pytest.raises(SpecError, match=r"metadata\.reference\.exclude: unknown key"):
        summarize(mmcore.load_spec(data))


def test_an_invalid_variant_names_its_path() -> None:
    data = load_spec("fusion-compare").to_dict()
    data["metadata"]["compare"]["cross-modal"]["layers"] = 0
    with pytest.raises(SpecError, match=r"metadata\.compare\.cross-modal\.layers"):
        comparison_specs(mmcore.load_spec(data))
    data["metadata"]["compare"]["cross-modal"].update(layers=1, query="audio")
    with pytest.raises(SpecError, match=r"metadata\.compare\.cross-modal: .*audio"):
        compare_fusions(mmcore.load_spec(data))

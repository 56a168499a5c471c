"""hf-llava: a tiny random transformers LlavaForConditionalGeneration imports with logits
within 1e-4 and greedy tokens (with an image) equal to transformers' generate; config
options mmcore does not implement are refused by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from mmcore.convert import import_model
from mmcore.errors import CheckpointError
from mmcore.generation import GenerationConfig, generate
from mmcore_llava import LlavaRunner

transformers = pytest.importorskip("transformers")

IMAGE_ID, VOCAB, PATCHES = 60, 64, 16
ATOL = 1e-4


def hf_llava(**overrides: Any) -> Any:
    """A tiny random LLaVA: CLIP 16 px / patch 4 (16 patches), 3 layers; LLaMA 2 layers GQA."""
    vision = transformers.CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
        image_size=16, patch_size=4, projection_dim=8)
    text = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=24, intermediate_size=40, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        bos_token_id=1, eos_token_id=2)
    config = transformers.LlavaConfig(vision_config=vision, text_config=text,
                                      image_token_index=IMAGE_ID, projector_hidden_act="gelu",
                                      image_seq_length=PATCHES, **overrides)
    torch.manual_seed(0)
    model = transformers.LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0, 0.15)
    return model


def prompts(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts (B, T) with one image's 16 placeholders each, and their mask."""
    g = torch.Generator().manual_seed(1)
    rows = []
    for i in range(batch):
        head = torch.randint(3, IMAGE_ID, (2 + i,), generator=g).tolist()
        tail = torch.randint(3, IMAGE_ID, (4,), generator=g).tolist()
        rows.append([1, *head, *[IMAGE_ID] * PATCHES, *tail])
    width = max(len(r) for r in rows)
    ids = torch.zeros(batch, width, dtype=torch.long)
    mask = torch.zeros(batch, width, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = True
    return ids, mask


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    reference = hf_llava()
    folder = tmp_path_factory.mktemp("llava")
    reference.save_pretrained(folder)
    return reference, import_model(folder).eval()  # detected as hf-llava


def pixels(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(2))


def test_imported_spec_is_the_llava_composition(pair: tuple[Any, Any]) -> None:
    _, model = pair
    spec = model.spec
    encoder = spec.modalities["image"].encoder
    assert (encoder.type, encoder.params["feature_layer"], encoder.params["select"]) == \
        ("vit-features", -2, "default")
    assert (spec.fusion.type, spec.fusion.params["image_token_id"],
            spec.fusion.params["projector"]) == ("llava", IMAGE_ID, "mlp2x_gelu")
    assert sum(p.numel() for p in model.parameters()) == \
        sum(p.numel() for p in pair[0].parameters())


def test_logits_match_transformers(pair: tuple[Any, Any]) -> None:
    reference, model = pair
    ids, mask = prompts()
    with torch.no_grad():
        want = reference(input_ids=ids, attention_mask=mask.long(),
                         pixel_values=pixels()).logits
        got = model({"image": pixels(), "text": {"ids": ids, "mask": mask}}).heads["lm"]
    real = mask[..., None].expand_as(want)
    assert float((want - got)[real].abs().max()) < ATOL


def test_greedy_tokens_with_an_image_equal_transformers_generate(pair: tuple[Any, Any]) -> None:
    reference, model = pair
    ids, mask = prompts()
    with torch.no_grad():
        want = reference.generate(input_ids=ids, attention_mask=mask.long(),
                                  pixel_values=pixels(), max_new_tokens=10, do_sample=False,
                                  eos_token_id=None, pad_token_id=0)
    config = GenerationConfig(max_new_tokens=10, pad_token_id=0)
    got = generate(LlavaRunner(model, pixels()), ids, attention_mask=mask, config=config)
    assert torch.equal(got.sequences, want)


def test_beam_search_repeats_each_prompts_image(pair: tuple[Any, Any]) -> None:
    reference, model = pair
    ids, mask = prompts()
    with torch.no_grad():
        want = reference.generate(input_ids=ids, attention_mask=mask.long(),
                                  pixel_values=pixels(), max_new_tokens=6, do_sample=False,
                                  num_beams=3, eos_token_id=None, pad_token_id=0)
    config = GenerationConfig(max_new_tokens=6, num_beams=3, pad_token_id=0)
    got = generate(LlavaRunner(model, pixels()), ids, attention_mask=mask, config=config)
    assert torch.equal(got.sequences, want)


def test_placeholders_and_images_must_agree(pair: tuple[Any, Any]) -> None:
    _, model = pair
    ids, mask = prompts()
    with pytest.raises(ValueError, match=r"hold 32 <image> token\(s\) \(2 placeholder\(s\)\) "
                                         r"but 1 image\(s\)"):
        model({"image": pixels(1), "text": {"ids": ids, "mask": mask}})


@pytest.mark.parametrize(("field", "value", "named"), [
    ("vision_feature_layer", [-2, -5], "vision_feature_layer"),
    ("vision_feature_select_strategy", "cls_patch", "vision_feature_select_strategy"),
    ("image_grid_pinpoints", [[336, 672]], "image_grid_pinpoints"),
    ("projector_hidden_act", "relu", "projector_hidden_act"),
    ("image_seq_length", 9, "image_seq_length"),
])
def test_unimplemented_config_is_refused_by_name(tmp_path: Path, field: str, value: Any,
                                                 named: str) -> None:
    hf_llava().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config[field] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=named):
        import_model(tmp_path, "hf-llava")


def test_full_strategy_keeps_the_cls_token(tmp_path: Path) -> None:
    reference = hf_llava(vision_feature_select_strategy="full")
    reference.config.image_seq_length = PATCHES + 1
    reference.save_pretrained(tmp_path)
    model = import_model(tmp_path).eval()
    ids = torch.tensor([[1, 5, *[IMAGE_ID] * (PATCHES + 1), 7, 8]])
    with torch.no_grad():
        want = reference(input_ids=ids, pixel_values=pixels(1)).logits
        got = model({"image": pixels(1), "text": {"ids": ids}}).heads["lm"]
    assert float((want - got).abs().max()) < ATOL

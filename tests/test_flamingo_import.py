"""hf-idefics: a tiny random IdeficsForVisionText2Text saved by transformers, imported and
compared: logits within 1e-4 and greedy tokens equal, two images in the prompt; config
options the import does not implement are refused by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from mmcore.convert import import_model
from mmcore.errors import CheckpointError
from mmcore.generation import GenerationConfig, generate
from mmcore_flamingo.masking import media_index
from mmcore_flamingo.runner import FlamingoRunner

transformers = pytest.importorskip("transformers")
IMAGE_ID = 100  # the first additional id


def hf_idefics(**overrides: Any) -> Any:
    torch.manual_seed(0)
    fields: dict[str, Any] = {"use_resampler": True, **overrides}
    config = transformers.IdeficsConfig(
        vocab_size=100, additional_vocab_size=2, hidden_size=32, intermediate_size=64,
        num_hidden_layers=4, num_attention_heads=4, cross_layer_interval=2,
        max_position_embeddings=64, pad_token_id=0,
        vision_config={"embed_dim": 16, "image_size": 16, "patch_size": 8,
                       "num_hidden_layers": 1, "num_attention_heads": 2,
                       "intermediate_size": 32},
        perceiver_config={"use_resampler": True, "resampler_n_latents": 3,
                          "resampler_depth": 1, "resampler_n_heads": 2,
                          "resampler_head_dim": 12},
        **fields)
    model = transformers.IdeficsForVisionText2Text(config).eval()
    with torch.no_grad():  # gates away from zero, so the blocks matter
        for name, p in model.named_parameters():
            if "alpha" in name:
                p.normal_(0, 0.8)
    return model


@pytest.fixture(scope="module", params=["float", "vector"])
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    reference = hf_idefics(alpha_type=request.param)
    folder = tmp_path_factory.mktemp("idefics")
    reference.save_pretrained(folder)
    return reference, import_model(folder).eval()


def prompt() -> tuple[torch.Tensor, torch.Tensor]:
    """Two left-padded rows, two images each (markers at different places)."""
    ids = torch.tensor([[0, 0, 5, IMAGE_ID, 7, 8, 9, IMAGE_ID, 11, 12],
                        [3, IMAGE_ID, 4, 5, 6, 7, IMAGE_ID, 13, 14, 15]])
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[0, :2] = False
    return ids, mask


def image_attention_mask(ids: torch.Tensor) -> torch.Tensor:
    """(B, T, 2): HF's one-hot of each token's last image (what Idefics' processor makes)."""
    index = media_index(ids, IMAGE_ID)
    return torch.stack([index == 1, index == 2], -1).long()


def test_logits_match_transformers(pair) -> None:
    reference, model = pair
    ids, mask = prompt()
    pixels = torch.randn(2, 2, 3, 16, 16)
    with torch.no_grad():
        theirs = reference(input_ids=ids, attention_mask=mask.long(), pixel_values=pixels,
                           image_attention_mask=image_attention_mask(ids)).logits
        ours = model({"text": {"ids": ids, "mask": mask},
                      "image": pixels.flatten(0, 1)}).heads["lm"]
    assert ours.shape == theirs.shape == (2, 10, 102)
    torch.testing.assert_close(ours[mask], theirs[mask], atol=1e-4, rtol=1e-4)


def test_greedy_tokens_match_transformers(pair) -> None:
    reference, model = pair
    ids, mask = prompt()
    pixels = torch.randn(2, 2, 3, 16, 16)
    with torch.no_grad():
        theirs = reference.generate(input_ids=ids, attention_mask=mask.long(),
                                    pixel_values=pixels,
                                    image_attention_mask=image_attention_mask(ids),
                                    max_new_tokens=8, do_sample=False, eos_token_id=None,
                                    pad_token_id=0)[:, ids.shape[1]:]
    runner = FlamingoRunner(model, pixels.flatten(0, 1))
    ours = generate(runner, ids, attention_mask=mask,
                    config=GenerationConfig(max_new_tokens=8, min_new_tokens=8))
    assert ours.new_tokens.tolist() == theirs.tolist()


def test_without_the_resampler_too(tmp_path: Path) -> None:
    reference = hf_idefics(use_resampler=False)
    reference.save_pretrained(tmp_path)
    model = import_model(tmp_path).eval()
    ids, mask = prompt()
    pixels = torch.randn(2, 2, 3, 16, 16)
    with torch.no_grad():
        theirs = reference(input_ids=ids, attention_mask=mask.long(), pixel_values=pixels,
                           image_attention_mask=image_attention_mask(ids)).logits
        ours = model({"text": {"ids": ids, "mask": mask},
                      "image": pixels.flatten(0, 1)}).heads["lm"]
    torch.testing.assert_close(ours[mask], theirs[mask], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("key", "value", "named"), [
    ("qk_layer_norms", True, "qk_layer_norms = True"),
    ("alpha_type", "matrix", "alpha_type = 'matrix'"),
    ("perceiver_config", {"qk_layer_norms_perceiver": True, "use_resampler": True},
     "perceiver_config.qk_layer_norms_perceiver"),
    ("rope_parameters", {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4},
     "rope_parameters.rope_type = 'linear'"),
])
def test_unimplemented_options_are_refused_by_name(tmp_path: Path, key: str, value: Any,
                                                   named: str) -> None:
    folder = tmp_path / "idefics"
    hf_idefics().save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=named.replace("(", r"\(")):
        import_model(folder)

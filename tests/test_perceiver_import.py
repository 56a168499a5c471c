"""Hugging Face Perceiver import (plugins/mmcore_perceiver/hf_convert.py): a tiny random
``PerceiverForMaskedLM`` saved by transformers is imported and gives the same logits
within 1e-4, and config options mmcore does not implement are refused by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from mmcore.convert import find_converter, import_model
from mmcore.errors import CheckpointError

transformers = pytest.importorskip("transformers")

#: tiny but exercising every option the import maps: d_latents != d_model, 2 repeats of a
#: 2-layer latent stack, widening factors 2 and 3, several heads, no query residual
TINY: dict[str, Any] = {
    "num_latents": 6, "d_latents": 24, "d_model": 16, "num_blocks": 2,
    "num_self_attends_per_block": 2, "num_self_attention_heads": 4,
    "num_cross_attention_heads": 2, "self_attention_widening_factor": 2,
    "cross_attention_widening_factor": 3, "vocab_size": 262,
    "max_position_embeddings": 12, "use_query_residual": True,
}


def save_masked_lm(folder: Path, **overrides: Any) -> Any:
    """A random PerceiverForMaskedLM saved as config.json + model.safetensors."""
    torch.manual_seed(0)
    config = transformers.PerceiverConfig(**{**TINY, **overrides})
    model = transformers.PerceiverForMaskedLM(config).eval()
    with torch.no_grad():  # HF's 0.02 init leaves outputs nearly input-independent:
        for name, p in model.named_parameters():  # weights of unit gain, biases and norms moved
            if p.dim() == 2 and "embeddings" not in name and "latents" not in name:
                p.normal_(0.0, p.shape[1] ** -0.5)
            elif p.dim() == 2:
                p.normal_(0.0, 1.0)
            else:
                p.add_(0.2 * torch.randn_like(p))
    model.save_pretrained(folder, safe_serialization=True)
    return model


@pytest.mark.parametrize("query_residual", [True, False])
def test_masked_lm_logits_match_transformers(tmp_path: Path, query_residual: bool) -> None:
    reference = save_masked_lm(tmp_path, use_query_residual=query_residual)
    assert find_converter(tmp_path)[0] == "hf-perceiver"
    model = import_model(tmp_path).eval()
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 262, (3, 12), generator=generator)
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 7:] = 0  # a padded row: the encoder must ignore its padding
    with torch.no_grad():
        expected = reference(inputs=ids, attention_mask=mask).logits  # (B, 12, 262)
        got = model({"text": {"ids": ids, "mask": mask.bool()}}).heads["mlm"]
    assert got.shape == expected.shape == (3, 12, 262)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    # the logits depend on the input, position and item, far beyond the tolerance
    assert (expected[0] - expected[2]).abs().max() > 0.1
    assert (expected[0, 0] - expected[0, 1]).abs().max() > 0.1


def test_padding_changes_nothing_but_is_read_when_unmasked(tmp_path: Path) -> None:
    save_masked_lm(tmp_path)
    model = import_model(tmp_path).eval()
    ids = torch.randint(0, 262, (1, 12), generator=torch.Generator().manual_seed(2))
    other = ids.clone()
    other[0, 8:] = (ids[0, 8:] + 17) % 262
    mask = (torch.arange(12) < 8)[None]
    with torch.no_grad():
        a = model({"text": {"ids": ids, "mask": mask}}).heads["mlm"]
        b = model({"text": {"ids": other, "mask": mask}}).heads["mlm"]
        c = model({"text": {"ids": other, "mask": torch.ones_like(mask)}}).heads["mlm"]
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert (a - c).abs().max() > 1e-3


def _edit_config(folder: Path, **changes: Any) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(("changes", "message"), [
    ({"qk_channels": 32}, "qk_channels=32"),
    ({"v_channels": 16}, "v_channels=16"),
    ({"cross_attention_shape_for_attention": "x"}, "cross_attention_shape_for_attention"),
    ({"architectures": ["PerceiverForOpticalFlow"]}, "PerceiverForOpticalFlow"),
    ({"hidden_act": "mish"}, "hidden_act"),
])
def test_unimplemented_options_are_refused_by_name(tmp_path: Path, changes: dict[str, Any],
                                                   message: str) -> None:
    save_masked_lm(tmp_path)
    _edit_config(tmp_path, **changes)
    with pytest.raises(CheckpointError, match=message):
        import_model(tmp_path)


def test_a_missing_weight_is_named(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    save_masked_lm(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["perceiver.embeddings.latents"]
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"fusion\.backbone\.latents"):
        import_model(tmp_path)

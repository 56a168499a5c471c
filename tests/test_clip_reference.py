"""mmcore's CLIP against Hugging Face transformers' CLIPModel: same weights, same numbers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import mmcore
from mmcore_clip.hf_clip import from_hf_clip, hf_clip_to_mmcore, spec_from_hf_clip_config

transformers = pytest.importorskip("transformers")

VIT_B_32_PARAMS = 151_277_313
VOCAB, CONTEXT, IMAGE = 100, 16, 32


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads, and on a busy machine the thread pool's
    barriers make them many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_config(eos_token_id: int) -> Any:
    """A small CLIPConfig; text EOT is ``VOCAB - 1`` (the highest id)."""
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "vocab_size": VOCAB, "max_position_embeddings": CONTEXT,
            "eos_token_id": eos_token_id, "bos_token_id": 1, "pad_token_id": 0}
    vision = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "image_size": IMAGE, "patch_size": 8}
    return transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)


def tiny_hf_model(eos_token_id: int) -> Any:
    """A random tiny HF CLIPModel; every parameter (norms included) is perturbed so a
    mis-mapped weight or bias shows."""
    torch.manual_seed(0)
    model = transformers.CLIPModel(tiny_config(eos_token_id)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "logit_scale":
                p.add_(torch.randn_like(p) * 0.05)
    return model


def text_inputs(batch: int) -> tuple[Tensor, Tensor]:
    """ids (B, L) with EOT = VOCAB - 1 as the last valid token, padded with 0; mask (B, L)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, VOCAB - 1, (batch, CONTEXT), generator=g)
    lengths = torch.tensor([CONTEXT, 3, 9, 2][:batch])
    mask = torch.arange(CONTEXT)[None, :] < lengths[:, None]
    ids = ids.masked_fill(~mask, 0)
    ids[torch.arange(batch), lengths - 1] = VOCAB - 1
    return ids, mask


@pytest.mark.parametrize("kernel", ["sdpa", "reference"])
@pytest.mark.parametrize("eos_token_id", [VOCAB - 1, 2], ids=["eos-id", "legacy-argmax"])
def test_tiny_clip_matches_transformers(eos_token_id: int, kernel: str) -> None:
    hf = tiny_hf_model(eos_token_id)
    spec = spec_from_hf_clip_config(hf.config)
    spec["kernels"] = {"attention": kernel}
    ours = mmcore.build(spec).eval()
    ours.load_state_dict(hf_clip_to_mmcore(hf.state_dict()), strict=True)
    pixels = torch.randn(4, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(2))
    ids, mask = text_inputs(4)
    with torch.no_grad():
        out = ours({"image": pixels, "text": {"ids": ids, "mask": mask}})
        ref = hf(input_ids=ids, pixel_values=pixels, attention_mask=mask.long())
        hf_image = hf.get_image_features(pixel_values=pixels).pooler_output
        hf_text = hf.get_text_features(input_ids=ids, attention_mask=mask.long()).pooler_output
        scale = ours.objectives["contrastive"].scale()
    image, text = out.embeddings["image"], out.embeddings["text"]
    logits = scale * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()
    torch.testing.assert_close(image, hf_image, atol=1e-5, rtol=0)
    torch.testing.assert_close(text, hf_text, atol=1e-5, rtol=0)
    # logits are scale (~14) x cosine: the embeddings' 1e-5, scaled (1e-5 alone is ~10 ulp)
    torch.testing.assert_close(logits, ref.logits_per_image, atol=1e-5 * float(scale), rtol=0)


def test_losses_match_transformers() -> None:
    hf = tiny_hf_model(VOCAB - 1)
    ours = from_hf_clip(hf).eval()
    pixels = torch.randn(4, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(3))
    ids, mask = text_inputs(4)
    with torch.no_grad():
        loss = ours.loss({"image": pixels, "text": {"ids": ids, "mask": mask}})["loss"]
        ref = hf(input_ids=ids, pixel_values=pixels, attention_mask=mask.long(), return_loss=True)
    torch.testing.assert_close(loss, ref.loss, atol=1e-5, rtol=0)


def test_vit_b_32_parameter_counts() -> None:
    ours = mmcore.build("clip-vit-b-32", device="meta")
    with torch.device("meta"):
        hf = transformers.CLIPModel(transformers.CLIPConfig())
    assert sum(p.numel() for p in ours.parameters()) == VIT_B_32_PARAMS
    assert sum(p.numel() for p in hf.parameters()) == VIT_B_32_PARAMS
    mapped = {k: tuple(v.shape) for k, v in hf_clip_to_mmcore(hf.state_dict()).items()}
    assert mapped == {k: tuple(v.shape) for k, v in ours.state_dict().items()}


def test_spec_from_default_config_is_the_preset_architecture() -> None:
    spec = mmcore.load_spec(spec_from_hf_clip_config(transformers.CLIPConfig()))
    preset = mmcore.load_spec("clip-vit-b-32")
    for modality in ("image", "text"):
        ours, theirs = spec.modalities[modality], preset.modalities[modality]
        for part in ("tokenizer", "encoder"):
            a, b = getattr(ours, part), getattr(theirs, part)
            assert a.type == b.type
            assert {k: v for k, v in a.params.items() if k in b.params} == b.params


def test_unknown_keys_are_refused_and_position_ids_dropped() -> None:
    weight = torch.zeros(1)
    assert hf_clip_to_mmcore({"text_model.embeddings.position_ids": weight}) == {}
    with pytest.raises(KeyError, match="classifier"):
        hf_clip_to_mmcore({"classifier.weight": weight})

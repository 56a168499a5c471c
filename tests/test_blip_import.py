"""hf-blip: parity with transformers on tiny random BLIP models it saves itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from mmcore.convert import import_model
from mmcore.errors import CheckpointError
from mmcore.generation import GenerationConfig
from mmcore_blip.runner import generate_captions

TEXT = {"vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 37, "max_position_embeddings": 40, "bos_token_id": 97,
        "sep_token_id": 3, "pad_token_id": 0, "hidden_act": "gelu"}
VISION = {"hidden_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4,
          "intermediate_size": 48, "image_size": 30, "patch_size": 10}


def _save(cls_name: str, folder: Path) -> torch.nn.Module:
    import transformers

    config = transformers.BlipConfig(text_config=TEXT, vision_config=VISION,
                                     image_text_hidden_size=16)
    torch.manual_seed(0)
    model = getattr(transformers, cls_name)(config).eval()
    with torch.no_grad():  # far from the init, so every weight matters
        for name, p in model.named_parameters():
            if "norm" in name.lower():
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.2)
            else:
                p.normal_(0.0, 1.0 if p.dim() > 1 else 0.1)
    model.save_pretrained(folder)
    return model


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(3, 3, 30, 30, generator=g)
    ids = torch.randint(4, 97, (3, 7), generator=g)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:] = 0
    return pixels, ids, mask


def test_retrieval_itm_and_itc_scores(tmp_path: Path) -> None:
    ref = _save("BlipForImageTextRetrieval", tmp_path)
    pixels, ids, mask = _inputs()
    with torch.no_grad():
        itm_ref = ref(input_ids=ids, pixel_values=pixels, attention_mask=mask).itm_score
        itc_ref = ref(input_ids=ids, pixel_values=pixels, attention_mask=mask,
                      use_itm_head=False).itm_score
    model = import_model(tmp_path).eval()
    text = {"ids": ids, "mask": mask.bool()}
    with torch.no_grad():
        out = model({"image": pixels, "text": text})
        itm = model.objectives["itm"].head(out.tokens["fused"].x[:, 0])
        img = torch.nn.functional.normalize(out.embeddings["image"], dim=-1)
        txt = torch.nn.functional.normalize(out.embeddings["text"], dim=-1)
    torch.testing.assert_close(itm, itm_ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(img @ txt.t(), itc_ref, atol=1e-4, rtol=0)
    assert float(itm_ref.std()) > 0.01  # the comparison is not between constants


def test_captioning_greedy_tokens_equal(tmp_path: Path) -> None:
    ref = _save("BlipForConditionalGeneration", tmp_path)
    pixels, _, _ = _inputs()
    with torch.no_grad():
        expected = ref.generate(pixel_values=pixels, max_new_tokens=12, do_sample=False,
                                num_beams=1, min_length=0)
    model = import_model(tmp_path).eval()
    out = generate_captions(model, pixels, config=GenerationConfig(max_new_tokens=12))
    got = out.sequences
    width = min(got.shape[1], expected.shape[1])
    assert torch.equal(got[:, :width], expected[:, :width])
    assert got.shape[1] == expected.shape[1] or bool(out.finished.all())
    assert len(set(map(tuple, expected.tolist()))) > 1  # the images get different captions


def _config(tmp_path: Path, **changes: object) -> Path:
    _save("BlipForImageTextRetrieval", tmp_path)
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        part, _, name = key.partition(".")
        if name:
            config[part][name] = value
        else:
            config[part] = value
    path.write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize(("key", "value", "named"), [
    ("text_config.position_embedding_type", "relative_key",
     "text_config.position_embedding_type"),
    ("architectures", ["BlipForQuestionAnswering"], "architectures"),
    ("text_config.hidden_act", "swish_beta", "text_config.hidden_act"),
    ("text_config.encoder_hidden_size", 48, "text_config.encoder_hidden_size"),
])
def test_unimplemented_options_are_refused_by_name(tmp_path: Path, key: str, value: object,
                                                   named: str) -> None:
    with pytest.raises(CheckpointError, match=named.replace(".", r"\.")):
        import_model(_config(tmp_path, **{key: value}))

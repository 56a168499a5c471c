"""Export round trips for the vision-language families (hf-blip, hf-idefics, hf-perceiver):
a tiny random model saved by transformers is imported, exported with ``mmcore export``,
loaded back by transformers' ``from_pretrained`` (outputs within 1e-4 of the mmcore
model's, tokenizer ids equal to the mmcore preprocessor's) and imported again (the same
state dict)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from mmcore.checkpoint import save
from mmcore.cli import main
from mmcore.convert import export_model, import_model
from mmcore.errors import CheckpointError

transformers = pytest.importorskip("transformers")



@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loaded checkpoints write their tokenizer files under the test's own folder."""
    monkeypatch.setenv("MMCORE_CACHE", str(tmp_path / "cache"))


WORDS = ["a", "red", "blue", "green", "star", "circle", "square", "on", "the", "left", "right",
         "small", "big", "photo", "of", "##s", "##ed", "and", "is", "to"]


def _bert_tokenizer(folder: Path) -> Any:
    """A WordPiece BertTokenizerFast ([PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3, [MASK] 4)."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = transformers.BertTokenizerFast(str(folder / "vocab.txt"))
    tok.save_pretrained(folder)
    (folder / "vocab.txt").unlink()
    return tok


def _unit_gain(model: torch.nn.Module) -> None:
    """Weights far from HF's 0.02 init (so every one matters) yet of unit gain (outputs of
    order one: float32 rounding stays far below the 1e-4 tolerance)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name.lower():
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.2)
            elif "embed" in name or p.dim() < 2:
                p.normal_(0.0, 1.0 if p.dim() > 1 else 0.1)
            else:
                p.normal_(0.0, p[0].numel() ** -0.5)


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def _exported(model: Any, tmp_path: Path, fmt: str) -> Path:
    """``mmcore export`` of ``model`` (saved as an mmcore checkpoint first), its folder.
    The imported folder is deleted first: the tokenizer must come from the checkpoint."""
    ckpt = save(model, tmp_path / "model.safetensors")
    shutil.rmtree(tmp_path / "hf")
    out = tmp_path / "exported"
    assert main(["export", str(ckpt), "--format", fmt, "--out", str(out)]) == 0
    return out


# -- BLIP ---------------------------------------------------------------------------------

BLIP_TEXT = {"vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2,
             "num_attention_heads": 4, "intermediate_size": 37, "max_position_embeddings": 40,
             "bos_token_id": 97, "sep_token_id": 3, "pad_token_id": 0, "hidden_act": "gelu"}
BLIP_VISION = {"hidden_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4,
               "intermediate_size": 48, "image_size": 30, "patch_size": 10}
TEXTS = ["a red star on the left", "small blue squares", "a photo of a big green circle"]


def _blip(cls_name: str, folder: Path) -> None:
    config = transformers.BlipConfig(text_config=BLIP_TEXT, vision_config=BLIP_VISION,
                                     image_text_hidden_size=16)
    torch.manual_seed(0)
    model = getattr(transformers, cls_name)(config).eval()
    _unit_gain(model)
    model.save_pretrained(folder)
    _bert_tokenizer(folder)


def test_blip_retrieval_round_trip(tmp_path: Path) -> None:
    _blip("BlipForImageTextRetrieval", tmp_path / "hf")
    model = import_model(tmp_path / "hf").eval()
    with torch.no_grad():
        model.objectives["itc"].logit_scale.fill_(3.1)  # not HF's: it must survive
    out = _exported(model, tmp_path, "hf-blip")
    assert {"config.json", "model.safetensors", "tokenizer.json",
            "preprocessor_config.json"} <= {p.name for p in out.iterdir()}

    text = model.preprocessors["text"](TEXTS)
    theirs = transformers.AutoTokenizer.from_pretrained(out)(TEXTS)["input_ids"]
    ours = [row[m].tolist() for row, m in zip(text["ids"], text["mask"], strict=True)]
    assert ours == theirs and len({len(r) for r in ours}) > 1
    ids, mask = text["ids"], text["mask"]
    pixels = torch.randn(3, 3, 30, 30, generator=torch.Generator().manual_seed(1))
    reference = transformers.BlipForImageTextRetrieval.from_pretrained(out).eval()
    with torch.no_grad():
        itm_ref = reference(input_ids=ids, pixel_values=pixels, attention_mask=mask.long()
                            ).itm_score
        itc_ref = reference(input_ids=ids, pixel_values=pixels, attention_mask=mask.long(),
                            use_itm_head=False).itm_score
        got = model({"image": pixels, "text": {"ids": ids, "mask": mask}})
        itm = model.objectives["itm"].head(got.tokens["fused"].x[:, 0])
        img = torch.nn.functional.normalize(got.embeddings["image"], dim=-1)
        txt = torch.nn.functional.normalize(got.embeddings["text"], dim=-1)
    torch.testing.assert_close(itm, itm_ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(img @ txt.t(), itc_ref, atol=1e-4, rtol=0)
    assert float(itm_ref.std()) > 0.01
    _same_state(import_model(out), model)


@pytest.mark.parametrize("tied", [True, False])
def test_blip_captioning_round_trip(tmp_path: Path, tied: bool) -> None:
    _blip("BlipForConditionalGeneration", tmp_path / "hf")
    model = import_model(tmp_path / "hf").eval()
    if not tied:  # a fine-tuned output projection apart from the word embeddings
        with torch.no_grad():
            weight = model.objectives["lm"].head.decoder.weight
            weight.add_(0.3 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(4)))
    out = _exported(model, tmp_path, "hf-blip")
    reference = transformers.BlipForConditionalGeneration.from_pretrained(out).eval()
    head = reference.text_decoder.cls.predictions
    assert torch.equal(head.decoder.weight,
                       reference.text_decoder.bert.embeddings.word_embeddings.weight) == tied
    text = model.preprocessors["text"](TEXTS)
    ids, mask = text["ids"], text["mask"]
    pixels = torch.randn(3, 3, 30, 30, generator=torch.Generator().manual_seed(2))
    prompt = ids.clone()
    prompt[:, 0] = BLIP_TEXT["bos_token_id"]  # what mmcore's decoder reads first ([DEC])
    with torch.no_grad():
        theirs = reference(pixel_values=pixels, input_ids=prompt, attention_mask=mask.long()
                           ).logits
        states = model({"image": pixels, "text": {"ids": ids, "mask": mask}})
        ours = model.objectives["lm"].head(states.tokens["decoder"].x)
    torch.testing.assert_close(ours[mask], theirs[mask], atol=1e-4, rtol=0)
    assert float(theirs.std()) > 0.1
    _same_state(import_model(out), model)


def test_blip_with_three_modes_is_refused(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    import mmcore

    spec = mmcore.load_spec("blip-tiny").model_dump(mode="json", exclude_none=True)
    del spec["modalities"]["chroma"], spec["fusion"]["views"]  # one plain vit tower
    spec["modalities"]["image"]["encoder"] = {"type": "vit", "layers": 2, "heads": 4}
    model = mmcore.build(spec)
    with pytest.raises(CheckpointError, match=r"fusion modes .* are neither"):
        export_model(model, tmp_path / "out", "hf-blip")
    ckpt = save(model, tmp_path / "blip.safetensors")
    capsys.readouterr()
    assert main(["export", str(ckpt), "--format", "hf-blip", "--out",
                 str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err.strip()
    assert "cannot export to hf-blip: fusion modes" in err and "\n" not in err


# -- Perceiver ----------------------------------------------------------------------------

PERCEIVER = {"num_latents": 6, "d_latents": 24, "d_model": 16, "num_blocks": 2,
             "num_self_attends_per_block": 2, "num_self_attention_heads": 4,
             "num_cross_attention_heads": 2, "self_attention_widening_factor": 2,
             "cross_attention_widening_factor": 3, "vocab_size": 262,
             "max_position_embeddings": 12, "use_query_residual": False}


def test_perceiver_masked_lm_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    original = transformers.PerceiverForMaskedLM(transformers.PerceiverConfig(**PERCEIVER))
    _unit_gain(original)
    original.save_pretrained(tmp_path / "hf")
    model = import_model(tmp_path / "hf").eval()
    out = _exported(model, tmp_path, "hf-perceiver")
    reference = transformers.PerceiverForMaskedLM.from_pretrained(out).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    batch = tokenizer(["a red star", "blue"], padding="max_length", max_length=12,
                      return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids[0, :4].tolist() == [4, ord("a") + 6, ord(" ") + 6, ord("r") + 6]  # [CLS], bytes
    with torch.no_grad():
        theirs = reference(inputs=ids, attention_mask=mask).logits  # (2, 12, 262)
        ours = model({"text": {"ids": ids, "mask": mask.bool()}}).heads["mlm"]
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    assert float(theirs.std()) > 0.1
    _same_state(import_model(out), model)


def test_perceiver_untied_projection_is_refused(tmp_path: Path) -> None:
    original = transformers.PerceiverForMaskedLM(transformers.PerceiverConfig(**PERCEIVER))
    original.save_pretrained(tmp_path / "hf")
    model = import_model(tmp_path / "hf")
    with torch.no_grad():
        model.heads["mlm"].proj.weight.add_(0.1)
    with pytest.raises(CheckpointError, match="ties its vocabulary projection"):
        export_model(model, tmp_path / "out", "hf-perceiver")


# -- Idefics ------------------------------------------------------------------------------

IMAGE_ID = 100  # the first additional id: HF's vocab_size


def _idefics_tokenizer(folder: Path) -> None:
    """A word-level tokenizer.json: 100 base ids (<unk> 0, <s> 1, </s> 2, words), then
    <image> 100 and <fake_token_around_image> 101, BOS added by its post-processor."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    vocab |= {f"w{i}": i for i in range(len(vocab), IMAGE_ID)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<image>", "<fake_token_around_image>"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[
        ("<s>", 1)])
    assert tok.token_to_id("<image>") == IMAGE_ID
    tok.save(str(folder / "tokenizer.json"))


@pytest.mark.parametrize("alpha_type", ["float", "vector"])
def test_idefics_round_trip(tmp_path: Path, alpha_type: str) -> None:
    from test_flamingo_import import hf_idefics, image_attention_mask

    hf_idefics(alpha_type=alpha_type).save_pretrained(tmp_path / "hf")
    _idefics_tokenizer(tmp_path / "hf")
    model = import_model(tmp_path / "hf").eval()
    out = _exported(model, tmp_path, "hf-idefics")
    config = json.loads((out / "config.json").read_text())
    assert (config["vocab_size"], config["additional_vocab_size"]) == (100, 2)

    texts = ["a red star <image> on the left <image> big", "<image> small blue squares"]
    text = model.preprocessors["text"](texts)
    theirs = transformers.AutoTokenizer.from_pretrained(out)(texts)["input_ids"]
    ids, mask = text["ids"], text["mask"]
    assert [row[m].tolist() for row, m in zip(ids, mask, strict=True)] == theirs
    assert ids[0, 4] == IMAGE_ID
    ids[1, 2] = IMAGE_ID  # two images in every row
    reference = transformers.IdeficsForVisionText2Text.from_pretrained(out).eval()
    pixels = torch.randn(2, 2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask.long(), pixel_values=pixels,
                             image_attention_mask=image_attention_mask(ids)).logits
        got = model({"text": {"ids": ids, "mask": mask},
                     "image": pixels.flatten(0, 1)}).heads["lm"]
    torch.testing.assert_close(got[mask], expected[mask], atol=1e-4, rtol=1e-4)
    _same_state(import_model(out), model)

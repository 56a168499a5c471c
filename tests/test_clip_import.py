"""CLIP import/export (plugins/mmcore_clip): HF folders both ways, OpenAI/open_clip state
dicts in, the errors for broken inputs, and zero-shot / retrieval eval on folder datasets.

The transformers-dependent tests compare with a tiny random ``CLIPModel`` within 1e-5
(fp32); the rest build a tiny mmcore CLIP and need no transformers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from torch import Tensor

import mmcore
from mmcore.cli import main
from mmcore.convert import export_model, find_converter, import_model
from mmcore.errors import CheckpointError
from mmcore_clip.hf_clip import hf_tokenizer_preprocessor, spec_from_clip_config
from mmcore_clip.hf_config import clip_config
from mmcore_clip.templates import load_templates

CONTEXT, IMAGE, PATCH = 16, 32, 8
TEXTS = ["a photo of a cat", "A RED car!", "", "the big bird " * 12]
CORPUS = ["a photo of a cat", "a photo of a dog", "a red car", "the big bird", "a blue dog",
          "itap of a small bird", "art of the large cat"]


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``mmcore ARGV``."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# --- fixtures: a CLIP-like tokenizer.json and tiny models ---------------------------------


def build_tokenizer(path: Path) -> Any:
    """A small byte-level BPE with CLIP's </w> suffix, normaliser and pre-tokenizer, and a
    TemplateProcessing post-processor adding <|startoftext|> ... <|endoftext|>."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tokenizer = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    split = Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""")
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(split, behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420, special_tokens=["<|startoftext|>", "<|endoftext|>"],
        end_of_word_suffix="</w>", initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False)
    # every printable ASCII character as a word of its own, so each has a "</w>" token
    # and nothing is unknown (as in CLIP's vocabulary, which covers every byte)
    tokenizer.train_from_iterator([*CORPUS * 3, " ".join(chr(c) for c in range(33, 127))],
                                  trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", 0), ("<|endoftext|>", 1)])
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return tokenizer


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    build_tokenizer(path)
    return path


def vocab_size(tokenizer_json: Path) -> int:
    from tokenizers import Tokenizer

    return int(Tokenizer.from_file(str(tokenizer_json)).get_vocab_size())


def tiny_config(vocab: int, *, act: str = "quick_gelu", text_heads: int = 1,
                vision_heads: int = 2) -> dict[str, Any]:
    """A config.json mapping; head widths of 64 (text 64 x 1, vision 128 x 2) follow
    OpenAI's width // 64 convention, so the openai-clip import needs no config file."""
    text = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": text_heads, "vocab_size": vocab,
            "max_position_embeddings": CONTEXT, "hidden_act": act,
            "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
    vision = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
              "num_attention_heads": vision_heads, "image_size": IMAGE, "patch_size": PATCH,
              "hidden_act": act}
    return {"model_type": "clip", "text_config": text, "vision_config": vision,
            "projection_dim": 24}


def perturb(module: torch.nn.Module, seed: int) -> None:
    """Every parameter (norms included) off its init, so a mis-mapped tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not name.endswith("logit_scale"):
                p.add_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.fixture(scope="module")
def mm_model(tokenizer_json: Path) -> Any:
    """A tiny mmcore CLIP with the test tokenizer (no transformers needed)."""
    cfg = clip_config(tiny_config(vocab_size(tokenizer_json)))
    text = hf_tokenizer_preprocessor(str(tokenizer_json), CONTEXT)
    torch.manual_seed(0)
    model = mmcore.build(spec_from_clip_config(cfg, name="tiny-clip", text_preprocessor=text))
    perturb(model, 1)
    return model.eval()


@pytest.fixture(scope="module")
def hf_folder(mm_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mm_model exported as a Hugging Face CLIP folder."""
    out = tmp_path_factory.mktemp("hf") / "tiny-clip"
    export_model(mm_model, out, "hf-clip")
    return out


@pytest.fixture(scope="module")
def transformers() -> Any:
    return pytest.importorskip("transformers")


def hf_model(transformers: Any, config: dict[str, Any], seed: int) -> Any:
    torch.manual_seed(seed)
    model = transformers.CLIPModel(transformers.CLIPConfig(**config)).eval()
    perturb(model, seed)
    return model


@pytest.fixture(scope="module")
def hf_reference(transformers: Any, tokenizer_json: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """(tiny random transformers CLIPModel, its save_pretrained folder with tokenizer)."""
    model = hf_model(transformers, tiny_config(vocab_size(tokenizer_json)), seed=3)
    folder = tmp_path_factory.mktemp("hf-ref") / "clip"
    model.save_pretrained(folder)
    hf_tokenizer(transformers, tokenizer_json).save_pretrained(folder)
    return model, folder


def hf_tokenizer(transformers: Any, tokenizer_json: Path) -> Any:
    return transformers.CLIPTokenizerFast(
        tokenizer_file=str(tokenizer_json), bos_token="<|startoftext|>",
        eos_token="<|endoftext|>", pad_token="<|endoftext|>", unk_token="<|endoftext|>",
        model_max_length=CONTEXT)


# --- helpers ------------------------------------------------------------------------------


def pixels(batch: int = 3, seed: int = 5) -> Tensor:
    return torch.randn(batch, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed))


def mm_outputs(model: Any, images: Tensor, texts: list[str]) -> tuple[Tensor, Tensor, Tensor]:
    """(image embeddings, text embeddings, logits per image) of an mmcore CLIP."""
    with torch.no_grad():
        image = model.embed("image", images)
        text = model.embed("text", model.preprocess("text", texts))
        scale = model.objectives["contrastive"].scale()
    return image, text, scale * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()


def hf_outputs(model: Any, images: Tensor, ids: Tensor,
               mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    with torch.no_grad():
        image = model.get_image_features(pixel_values=images).pooler_output
        text = model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
        logits = model(input_ids=ids, pixel_values=images, attention_mask=mask).logits_per_image
    return image, text, logits


def assert_same_outputs(ours: tuple[Tensor, ...], theirs: tuple[Tensor, ...]) -> None:
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def import_cli(capsys: pytest.CaptureFixture[str], source: Path, out: Path,
               fmt: str | None = None) -> Any:
    code, stdout, err = run(capsys, "import", source, "--out", out,
                            *(["--format", fmt] if fmt else []))
    assert code == 0, err
    assert f"-> {out}" in stdout
    return mmcore.load(out).eval()


# --- hf-clip ------------------------------------------------------------------------------


def test_hf_import_matches_transformers(capsys: pytest.CaptureFixture[str], transformers: Any,
                                        hf_reference: tuple[Any, Path], tmp_path: Path) -> None:
    hf, folder = hf_reference
    assert find_converter(folder)[0] == "hf-clip"
    ours = import_cli(capsys, folder, tmp_path / "clip.safetensors")
    reference = transformers.CLIPTokenizerFast.from_pretrained(folder)
    encoded = reference(TEXTS, padding="max_length", max_length=CONTEXT, truncation=True,
                        return_tensors="pt")
    batch = ours.preprocess("text", TEXTS)
    assert torch.equal(batch["ids"], encoded["input_ids"])
    assert torch.equal(batch["mask"], encoded["attention_mask"].bool())
    assert int(batch["ids"][3, -1]) == 1  # truncated: the EOT stays last
    images = pixels()
    assert_same_outputs(mm_outputs(ours, images, TEXTS),
                        hf_outputs(hf, images, encoded["input_ids"], encoded["attention_mask"]))


def test_export_reloads_in_transformers(capsys: pytest.CaptureFixture[str], transformers: Any,
                                        hf_reference: tuple[Any, Path], tmp_path: Path) -> None:
    hf, folder = hf_reference
    ours = import_cli(capsys, folder, tmp_path / "clip.safetensors")
    code, _, err = run(capsys, "export", tmp_path / "clip.safetensors", "--format", "hf-clip",
                       "--out", tmp_path / "export")
    assert code == 0, err
    back, info = transformers.CLIPModel.from_pretrained(tmp_path / "export",
                                                         output_loading_info=True)
    assert not any(info.values()), info  # no missing / unexpected / mismatched keys
    for name, value in hf.state_dict().items():
        torch.testing.assert_close(back.state_dict()[name], value, atol=0, rtol=0)
    saved = json.loads((tmp_path / "export" / "config.json").read_text())
    assert {k: saved["text_config"][k] for k in ("eos_token_id", "bos_token_id", "pad_token_id",
                                                "hidden_act", "vocab_size")} == {
        "eos_token_id": 1, "bos_token_id": 0, "pad_token_id": 1, "hidden_act": "quick_gelu",
        "vocab_size": hf.config.text_config.vocab_size}
    tokenizer = transformers.CLIPTokenizerFast.from_pretrained(tmp_path / "export")
    encoded = tokenizer(TEXTS, padding="max_length", max_length=CONTEXT, truncation=True,
                        return_tensors="pt")
    # sizes whose resized long side is whole: HF (and torchvision) truncate it, mmcore rounds
    photos = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (h, w, 3), np.uint8))
              for i, (h, w) in enumerate([(40, 50), (80, 40)])]
    processor = transformers.CLIPImageProcessor.from_pretrained(tmp_path / "export")
    torch.testing.assert_close(ours.preprocess("image", photos),
                               processor(images=photos, return_tensors="pt")["pixel_values"],
                               atol=1e-5, rtol=0)
    images = pixels(seed=6)
    assert_same_outputs(hf_outputs(back.eval(), images, encoded["input_ids"],
                                   encoded["attention_mask"]),
                        hf_outputs(hf, images, encoded["input_ids"], encoded["attention_mask"]))


@pytest.mark.parametrize("data", [
    {},
    {"text_config": {"hidden_size": 64, "num_attention_heads": 2, "hidden_act": "gelu"},
     "vision_config": {"patch_size": 16, "layer_norm_eps": 1e-6}, "projection_dim": 32},
    {"text_config": {"eos_token_id": 2, "vocab_size": 1000}},
], ids=["empty", "partial", "legacy-eos"])
def test_config_defaults_match_transformers(transformers: Any, data: dict[str, Any]) -> None:
    """Keys missing from config.json default as transformers' CLIPConfig fills them."""
    ours = clip_config({"model_type": "clip", **data})
    theirs = transformers.CLIPConfig(**data).to_dict()
    assert ours.text == {k: theirs["text_config"][k] for k in ours.text}
    assert ours.vision == {k: theirs["vision_config"][k] for k in ours.vision}
    assert (ours.projection_dim, ours.logit_scale_init_value) == (
        theirs["projection_dim"], theirs["logit_scale_init_value"])


def test_legacy_config_dicts_override() -> None:
    """Older config.json files carry text_config_dict / vision_config_dict, which win."""
    cfg = clip_config({"text_config": {"hidden_size": 256}, "text_config_dict":
                       {"hidden_size": 128}, "vision_config_dict": {"image_size": 448}})
    assert (cfg.text["hidden_size"], cfg.vision["image_size"]) == (128, 448)
    assert cfg.text["num_attention_heads"] == 8 and cfg.vision["patch_size"] == 32


def test_export_of_a_built_model_round_trips(mm_model: Any, hf_folder: Path,
                                             tmp_path: Path) -> None:
    """mmcore -> HF folder -> mmcore: the same weights and outputs (no transformers)."""
    assert sorted(p.name for p in hf_folder.iterdir()) == [
        "config.json", "model.safetensors", "preprocessor_config.json",
        "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    back = import_model(hf_folder).eval()
    for name, value in mm_model.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name
    images = pixels(seed=7)
    assert_same_outputs(mm_outputs(back, images, TEXTS), mm_outputs(mm_model, images, TEXTS))


def test_export_refuses_a_model_hf_cannot_hold(tmp_path: Path) -> None:
    spec = mmcore.load_spec("clip-tiny").to_dict()
    spec["modalities"]["image"]["tokenizer"]["bias"] = True
    spec["modalities"]["text"]["encoder"]["causal"] = False
    with pytest.raises(CheckpointError, match=r"no bias.*causal: true"):
        export_model(mmcore.build(spec), tmp_path / "out", "hf-clip")


# --- openai-clip --------------------------------------------------------------------------


_OPENAI_LAYER = {"self_attn.out_proj.": "attn.out_proj.", "layer_norm1.": "ln_1.",
                 "layer_norm2.": "ln_2.", "mlp.fc1.": "mlp.c_fc.", "mlp.fc2.": "mlp.c_proj."}
_OPENAI_FIXED = {
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "logit_scale": "logit_scale",
}
_OPENAI_PREFIXES = {"vision_model.pre_layrnorm.": "visual.ln_pre.",
                    "vision_model.post_layernorm.": "visual.ln_post.",
                    "text_model.final_layer_norm.": "ln_final."}


def _resblock(key: str) -> tuple[str, str]:
    """HF ``{vision,text}_model.encoder.layers.i.<part>`` -> (OpenAI resblock prefix, part)."""
    tower, rest = key.split(".encoder.layers.")
    index, part = rest.split(".", 1)
    return ("visual." if tower == "vision_model" else "") + f"transformer.resblocks.{index}.", part


def _layer_tensors(key: str, hf_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """One HF layer tensor in OpenAI's names; q/k/v concatenated into in_proj (at q)."""
    prefix, part = _resblock(key)
    if part.startswith("self_attn.q_proj."):
        kind = part.rsplit(".", 1)[1]  # weight | bias
        qkv = [hf_state[key.replace("q_proj", n)] for n in ("q_proj", "k_proj", "v_proj")]
        return {f"{prefix}attn.in_proj_{kind}": torch.cat(qkv)}  # (3D, ...)
    for old, new in _OPENAI_LAYER.items():
        if part.startswith(old):
            return {prefix + new + part[len(old):]: value.clone()
                    for value in [hf_state[key]]}
    return {}  # k_proj / v_proj: taken with q_proj


def to_openai_layout(hf_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """An HF CLIPModel state dict renamed into OpenAI's CLIP layout (the inverse of the
    converter, written independently): q/k/v concatenated into in_proj, projections as
    (in, out) matrices, OpenAI's scripted-model extras and the causal mask buffer added."""
    out: dict[str, Tensor] = {}
    for key, value in hf_state.items():
        prefix = next((p for p in _OPENAI_PREFIXES if key.startswith(p)), None)
        if key in _OPENAI_FIXED:
            out[_OPENAI_FIXED[key]] = value.clone()
        elif key in ("visual_projection.weight", "text_projection.weight"):
            out["visual.proj" if key[0] == "v" else "text_projection"] = value.t().contiguous()
        elif prefix is not None:
            out[_OPENAI_PREFIXES[prefix] + key[len(prefix):]] = value.clone()
        elif ".encoder.layers." in key:
            out.update(_layer_tensors(key, hf_state))
    tokens, positions = (hf_state[f"text_model.embeddings.{n}_embedding.weight"]
                         for n in ("token", "position"))
    context = positions.shape[0]
    out.update({"input_resolution": torch.tensor(IMAGE), "context_length": torch.tensor(context),
                "vocab_size": torch.tensor(tokens.shape[0]),
                "attn_mask": torch.full((context, context), float("-inf")).triu(1)})
    return out


def test_openai_layout_renaming_is_complete(transformers: Any, tokenizer_json: Path) -> None:
    state = hf_model(transformers, tiny_config(vocab_size(tokenizer_json)), seed=3).state_dict()
    openai = to_openai_layout(state)
    assert openai["visual.transformer.resblocks.1.attn.in_proj_weight"].shape == (384, 128)
    assert openai["transformer.resblocks.0.attn.in_proj_bias"].shape == (192,)
    assert openai["visual.proj"].shape == (128, 24) and openai["text_projection"].shape == (64, 24)
    # 4 layers x (q, k, v) x (weight, bias) become 4 x in_proj (weight, bias); 4 extras
    assert len(openai) == len(state) - 24 + 8 + 4


def save_openai(state: dict[str, Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_openai_import_matches_transformers(capsys: pytest.CaptureFixture[str],
                                            transformers: Any, hf_reference: tuple[Any, Path],
                                            tokenizer_json: Path, tmp_path: Path,
                                            suffix: str) -> None:
    hf, _ = hf_reference
    weights = save_openai(to_openai_layout(hf.state_dict()), tmp_path / f"clip{suffix}")
    shutil.copy(tokenizer_json, tmp_path / "tokenizer.json")
    assert find_converter(weights)[0] == "openai-clip"
    ours = import_cli(capsys, weights, tmp_path / "mm.safetensors")
    assert ours.spec.modalities["image"].encoder.params["act"] == "quick_gelu"
    assert ours.spec.modalities["text"].preprocessor.type == "hf-tokenizer"
    batch = ours.preprocess("text", TEXTS)
    images = pixels(seed=8)
    assert_same_outputs(mm_outputs(ours, images, TEXTS),
                        hf_outputs(hf, images, batch["ids"], batch["mask"].long()))


def test_open_clip_config_gives_heads_and_gelu(capsys: pytest.CaptureFixture[str],
                                               transformers: Any, tokenizer_json: Path,
                                               tmp_path: Path) -> None:
    """Heads and activation are not in the shapes: open_clip_config.json supplies them."""
    config = tiny_config(vocab_size(tokenizer_json), act="gelu", text_heads=4, vision_heads=4)
    hf = hf_model(transformers, config, seed=4)
    save_openai(to_openai_layout(hf.state_dict()), tmp_path / "open_clip_model.safetensors")
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {
        "embed_dim": 24, "vision_cfg": {"width": 128, "layers": 2, "patch_size": PATCH,
                                        "image_size": IMAGE, "head_width": 32},
        "text_cfg": {"width": 64, "heads": 4, "layers": 2, "context_length": CONTEXT}},
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}))
    shutil.copy(tokenizer_json, tmp_path / "tokenizer.json")
    ours = import_cli(capsys, tmp_path, tmp_path / "mm.safetensors", fmt="openai-clip")
    image = ours.spec.modalities["image"]
    assert (image.encoder.params["heads"], image.encoder.params["act"]) == (4, "gelu")
    assert image.preprocessor.params["mean"] == [0.5, 0.5, 0.5]
    batch = ours.preprocess("text", TEXTS)
    images = pixels(seed=9)
    assert_same_outputs(mm_outputs(ours, images, TEXTS),
                        hf_outputs(hf, images, batch["ids"], batch["mask"].long()))


def test_openai_without_tokenizer_uses_byte_text(mm_model: Any, tmp_path: Path) -> None:
    """Built from the mmcore model's weights (no transformers); its vocabulary is larger than
    byte-text's 259 ids."""
    from mmcore_clip.hf_export import hf_state

    state = to_openai_layout(hf_state(mm_model, "contrastive"))
    weights = save_openai(state, tmp_path / "clip.pt")
    with pytest.warns(UserWarning, match="byte-text"):
        model = import_model(weights)
    assert model.spec.modalities["text"].preprocessor.type == "byte-text"
    images = pixels(seed=10)
    torch.testing.assert_close(model.eval().embed("image", images),
                               mm_model.embed("image", images), atol=1e-5, rtol=0)


# --- broken inputs ------------------------------------------------------------------------


def copy_folder(hf_folder: Path, tmp_path: Path, *drop: str) -> Path:
    folder = tmp_path / "broken"
    shutil.copytree(hf_folder, folder)
    for name in drop:
        (folder / name).unlink()
    return folder


def test_missing_files_are_named(capsys: pytest.CaptureFixture[str], hf_folder: Path,
                                 tmp_path: Path) -> None:
    folder = copy_folder(hf_folder, tmp_path, "model.safetensors", "tokenizer.json")
    code, _, err = run(capsys, "import", folder, "--out", tmp_path / "x.safetensors")
    assert code == 1
    assert "missing model.safetensors, tokenizer.json" in err
    assert not (tmp_path / "x.safetensors").exists()


def test_config_disagreeing_with_weights(hf_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(hf_folder, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"]["hidden_size"] = 64
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as info:
        import_model(folder)
    message = str(info.value)
    assert ("vision_model.embeddings.class_embedding has shape (128,) but the config "
            "(vision_config.hidden_size=64) implies (64,)") in message
    assert "visual_projection.weight has shape (24, 128)" in message


def test_pickle_offered_as_safetensors(hf_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(hf_folder, tmp_path)
    torch.save({"logit_scale": torch.zeros(())}, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"is a pickle .* not safetensors"):
        import_model(folder)


class NotATensor:
    """Pickling this needs unsafe loading."""


def test_unsafe_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "clip.pt"
    torch.save({"visual.proj": torch.zeros(2, 2), "extra": NotATensor()}, path)
    with pytest.raises(CheckpointError, match=r"needs unsafe loading.*NotATensor"):
        import_model(path, "openai-clip")


def test_resnet_and_non_clip_state_dicts(tmp_path: Path) -> None:
    resnet = {"visual.layer1.0.conv1.weight": torch.zeros(1), "visual.attnpool.c_proj.weight":
              torch.zeros(1), "token_embedding.weight": torch.zeros(1)}
    save_file(resnet, str(tmp_path / "rn50.safetensors"))
    with pytest.raises(CheckpointError, match=r"ResNet visual backbones .* not supported"):
        import_model(tmp_path / "rn50.safetensors", "openai-clip")
    save_file({"weight": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match=r"lacks visual\.conv1\.weight"):
        import_model(tmp_path / "other.safetensors", "openai-clip")


def test_open_clip_config_disagreeing_with_weights(mm_model: Any, tmp_path: Path) -> None:
    from mmcore_clip.hf_export import hf_state

    save_openai(to_openai_layout(hf_state(mm_model, "contrastive")),
                tmp_path / "open_clip_model.safetensors")
    (tmp_path / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": {"embed_dim": 32, "vision_cfg": {"width": 128}, "text_cfg": {}}}))
    with pytest.raises(CheckpointError, match=r"model_cfg\.embed_dim = 32 but the weights give 24"):
        import_model(tmp_path, "openai-clip")


# --- datasets and eval --------------------------------------------------------------------


def write_image(path: Path, colour: tuple[int, int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 30, (20, 24, 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def image_folder(root: Path) -> Path:
    colours = {"red_car": (200, 30, 30), "blue_dog": (30, 30, 200), "big_bird": (30, 200, 30)}
    for i, (name, colour) in enumerate(colours.items()):
        for j in range(3):
            write_image(root / name / f"{j}.png", colour, seed=10 * i + j)
    (root / "blue_dog" / "notes.txt").write_text("not an image")
    return root


def test_templates_sets() -> None:
    openai, simple = load_templates("openai"), load_templates("simple")
    assert (len(openai), len(simple)) == (80, 7)
    assert openai[0] == "a bad photo of a {}." and simple[0] == "itap of a {}."
    assert set(simple) <= set(openai) and len(set(openai)) == 80
    with pytest.raises(ValueError, match="unknown template set 'imagenet'; sets: openai, simple"):
        load_templates("imagenet")


def test_zero_shot_eval_on_an_image_folder(capsys: pytest.CaptureFixture[str], mm_model: Any,
                                           tmp_path: Path) -> None:
    root = image_folder(tmp_path / "photos")
    checkpoint = mmcore.save(mm_model, tmp_path / "clip.safetensors")
    code, out, err = run(capsys, "eval", checkpoint, "--task", "zero-shot", "--data",
                         f"image-folder:{root}", "--templates", "simple", "--json",
                         "--no-progress")
    assert code == 0, err
    metrics = json.loads(out)
    assert {"top1", "top5", "chance_top1", "samples", "templates", "num_classes"} <= set(metrics)
    assert (metrics["samples"], metrics["templates"], metrics["num_classes"]) == (9, 7, 3)
    # by hand: class names from folders (sorted, _ -> space), prompt ensembles, argmax
    names, templates = ["big bird", "blue dog", "red car"], load_templates("simple")
    with torch.no_grad():
        prompts = mm_model.preprocess("text", [t.format(n) for n in names for t in templates])
        classes = F.normalize(mm_model.embed("text", prompts), dim=-1).view(3, 7, -1).mean(1)
        paths = sorted(str(p) for p in root.rglob("*.png"))
        images = F.normalize(mm_model.embed("image", mm_model.preprocess("image", paths)), dim=-1)
    labels = torch.tensor([names.index(Path(p).parent.name.replace("_", " ")) for p in paths])
    predicted = (images @ F.normalize(classes, dim=-1).t()).argmax(1)
    assert metrics["top1"] == pytest.approx(float((predicted == labels).float().mean()))
    assert metrics["top5"] == 1.0 and metrics["chance_top1"] == pytest.approx(1 / 3)


def test_retrieval_eval_on_image_captions(capsys: pytest.CaptureFixture[str], mm_model: Any,
                                          tmp_path: Path) -> None:
    root = tmp_path / "pairs"
    for i, colour in enumerate([(200, 30, 30), (30, 30, 200), (30, 200, 30)]):
        write_image(root / f"{i}.png", colour, seed=i)
    rows = [{"image": "0.png", "caption": ["a red car", "a photo of a red car"]},
            {"image": "1.png", "caption": "a blue dog"}, {"image": "2.png", "caption": "a bird"}]
    (root / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    checkpoint = mmcore.save(mm_model, tmp_path / "clip.safetensors")
    spec = tmp_path / "data.yaml"
    spec.write_text(f"type: image-captions\npath: {root}\n")
    code, out, err = run(capsys, "eval", checkpoint, "--task", "retrieval", "--data", spec,
                         "--json", "--no-progress")
    assert code == 0, err
    metrics = json.loads(out)
    assert (metrics["samples"], metrics["match"]) == (4, "label")
    labels = torch.tensor([0, 0, 1, 2])  # one item per caption; image 0 has two
    with torch.no_grad():
        images = F.normalize(mm_model.embed("image", mm_model.preprocess(
            "image", [str(root / f"{i}.png") for i in labels.tolist()])), dim=-1)
        texts = F.normalize(mm_model.embed("text", mm_model.preprocess(
            "text", ["a red car", "a photo of a red car", "a blue dog", "a bird"])), dim=-1)
    scores = images @ texts.t()
    i2t = float((labels[scores.argmax(1)] == labels).float().mean())
    t2i = float((labels[scores.argmax(0)] == labels).float().mean())
    assert metrics["image_to_text"]["recall@1"] == pytest.approx(i2t)
    assert metrics["text_to_image"]["recall@1"] == pytest.approx(t2i)


def test_dataset_errors(capsys: pytest.CaptureFixture[str], mm_model: Any,
                        tmp_path: Path) -> None:
    checkpoint = mmcore.save(mm_model, tmp_path / "clip.safetensors")
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "eval", checkpoint, "--task", "zero-shot", "--data",
                       f"image-folder:{tmp_path / 'empty'}")
    assert code == 1 and "has no class subfolders" in err
    code, _, err = run(capsys, "eval", checkpoint, "--task", "zero-shot", "--templates", "simple")
    assert code == 2 and "--templates needs --data" in err
    root = tmp_path / "pairs"
    root.mkdir()
    (root / "captions.csv").write_text("image,caption\nmissing.png,a cat\n")
    code, _, err = run(capsys, "eval", checkpoint, "--task", "retrieval", "--data",
                       f"image-captions:{root}")
    assert code == 1 and "captions.csv:2: missing.png" in err

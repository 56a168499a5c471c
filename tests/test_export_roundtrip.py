"""Self-contained checkpoints and export round trips.

* An imported checkpoint carries its tokenizer files (mmcore.assets): import a tiny
  folder, save, delete the folder, load: same ids as transformers' tokenizer and the same
  outputs as the transformers model. Hostile ``assets`` metadata is refused.
* Export round trips: tiny random transformers models are saved, imported, exported with
  ``mmcore export --format hf-X``, reloaded in transformers (same outputs, same tokenizer
  ids) and imported again (the same state dict).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from test_clip_import import (
    CONTEXT,
    TEXTS,
    build_tokenizer,
    hf_model,
    hf_outputs,
    hf_tokenizer,
    mm_outputs,
    pixels,
    tiny_config,
    vocab_size,
)

import mmcore
from mmcore.assets import ASSETS_KEY, model_assets
from mmcore.cli import main
from mmcore.errors import CheckpointError

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """(tiny random transformers CLIPModel, its save_pretrained folder with a tokenizer)."""
    folder = tmp_path_factory.mktemp("hf-clip") / "clip"
    folder.mkdir()
    build_tokenizer(folder / "tokenizer.json")
    model = hf_model(transformers, tiny_config(vocab_size(folder / "tokenizer.json")), seed=3)
    model.save_pretrained(folder)
    hf_tokenizer(transformers, folder / "tokenizer.json").save_pretrained(folder)
    return model, folder


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Loaded checkpoints write their files under this test's folder."""
    monkeypatch.setenv("MMCORE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> str:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def clip_checkpoint(capsys: pytest.CaptureFixture[str], folder: Path, tmp_path: Path) -> Path:
    """``mmcore import`` of a copy of ``folder``; the copy is deleted afterwards."""
    copy = tmp_path / "source"
    shutil.copytree(folder, copy)
    out = tmp_path / "clip.safetensors"
    cli(capsys, "import", copy, "--out", out)
    shutil.rmtree(copy)
    return out


# -- (a) imported checkpoints carry their tokenizer files ---------------------------------


def test_imported_checkpoint_works_without_its_source_folder(
        capsys: pytest.CaptureFixture[str],
        hf_clip: tuple[Any, Path], tmp_path: Path, _cache: Path) -> None:
    hf, folder = hf_clip
    path = clip_checkpoint(capsys, folder, tmp_path)
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    spec = json.loads(meta["spec"])
    assert spec["modalities"]["text"]["preprocessor"]["path"] == "asset:tokenizer.json"
    assert str(tmp_path) not in json.dumps(spec["modalities"])  # no path of this machine

    model = mmcore.load(path).eval()
    stored = model.spec.modalities["text"].preprocessor.params["path"]
    assert Path(stored).parent.parent == _cache / "assets"
    assert (folder / "tokenizer_config.json").is_file()  # a sidecar: it travels along
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (folder / name).is_file():
            assert (Path(stored).parent / name).read_bytes() == (folder / name).read_bytes()
    assert model_assets(model) == {
        "modalities.text.preprocessor.path": (folder / "tokenizer.json").read_bytes()}

    encoded = transformers.CLIPTokenizerFast.from_pretrained(folder)(
        TEXTS, padding="max_length", max_length=CONTEXT, truncation=True, return_tensors="pt")
    batch = model.preprocess("text", TEXTS)
    assert torch.equal(batch["ids"], encoded["input_ids"])
    images = pixels()
    ours, theirs = mm_outputs(model, images, TEXTS), hf_outputs(
        hf, images, encoded["input_ids"], encoded["attention_mask"])
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)

    # saved again from the loaded model (its files now in the cache): the same files
    again = mmcore.save(model, tmp_path / "again.safetensors")
    with safe_open(str(again), framework="pt") as fh:
        assert json.loads(fh.metadata()[ASSETS_KEY]) == json.loads(meta[ASSETS_KEY])


def _rewrite_assets(path: Path, edit: Any) -> Path:
    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata())
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - not a dict
    meta = edit(meta)
    save_file(tensors, str(path), metadata=meta)
    return path


LOCATION = "modalities.text.preprocessor.path"


def _file(meta: dict[str, str], **changes: Any) -> dict[str, str]:
    """The tokenizer.json record of the metadata with ``changes``; ``rename``: its name."""
    records = json.loads(meta[ASSETS_KEY])
    record = records[LOCATION]
    item = record["files"].pop(record["name"])
    name = changes.pop("rename", record["name"])
    record["files"][name], record["name"] = {**item, **changes}, name
    return {**meta, ASSETS_KEY: json.dumps(records)}


def _moved(meta: dict[str, str]) -> dict[str, str]:
    records = json.loads(meta[ASSETS_KEY])
    return {**meta, ASSETS_KEY: json.dumps({"name": records.popitem()[1]})}


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: _file(m, rename="../../evil.json"), r"is not a plain file name"),
    (lambda m: _file(m, data="tampered"), r"does not match its sha256"),
    (lambda m: _file(m, encoding="base64", data="!!"), r"not valid base64"),
    (lambda m: _file(m, sha256="x" * 64), r"is not a sha256"),
    (_moved, r"belongs to no asset: parameter"),
    (lambda m: {**m, ASSETS_KEY: "{oops"}, r"metadata 'assets' is not valid JSON"),
    (lambda m: {**m, ASSETS_KEY: "[1]"}, r"metadata 'assets' must be a JSON object"),
], ids=["escaping-name", "tampered", "bad-base64", "bad-sha", "no-parameter", "bad-json",
        "not-object"])
def test_hostile_embedded_files_are_refused(
        capsys: pytest.CaptureFixture[str], hf_clip: tuple[Any, Path], tmp_path: Path,
        _cache: Path, edit: Any, message: str) -> None:
    path = _rewrite_assets(clip_checkpoint(capsys, hf_clip[1], tmp_path), edit)
    with pytest.raises(CheckpointError, match=message):
        mmcore.load(path)
    assert not (tmp_path / "evil.json").exists()
    assert not any(_cache.rglob("*.json")) if _cache.exists() else True


def test_embedded_files_over_the_limit_are_refused(
        capsys: pytest.CaptureFixture[str], hf_clip: tuple[Any, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    path = clip_checkpoint(capsys, hf_clip[1], tmp_path)
    monkeypatch.setenv("MMCORE_LIMIT_ASSET_BYTES", "1000")
    with pytest.raises(CheckpointError, match=r"exceed.*MMCORE_LIMIT_ASSET_BYTES"):
        mmcore.load(path)


def test_a_model_without_files_embeds_nothing(tmp_path: Path) -> None:
    model = mmcore.build("clip-tiny")
    path = mmcore.save(model, tmp_path / "m.safetensors")
    with safe_open(str(path), framework="pt") as fh:
        assert ASSETS_KEY not in fh.metadata()
    assert model_assets(mmcore.load(path)) == {}


# -- (b) export round trips ---------------------------------------------------------------


def same_state(a: Any, b: Any) -> None:
    """Two models hold the same tensors (names, shapes, values: exactly)."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for key, value in sa.items():
        assert torch.equal(value, sb[key]), key


def round_trip(capsys: pytest.CaptureFixture[str], folder: Path, fmt: str,
               tmp_path: Path) -> tuple[Any, Path]:
    """CLI: import ``folder`` -> checkpoint; export it as ``fmt``; import the export
    again: -> (the loaded checkpoint, the export folder), the re-import checked equal."""
    ckpt = tmp_path / "model.safetensors"
    cli(capsys, "import", folder, "--out", ckpt)
    out = tmp_path / "export"
    cli(capsys, "export", ckpt, "--format", fmt, "--out", out)
    again = tmp_path / "again.safetensors"
    cli(capsys, "import", out, "--out", again)
    model = mmcore.load(ckpt).eval()
    same_state(model, mmcore.load(again))
    return model, out


LM_TEXTS = ["the cat sat", "a dog ran on the mat", "the the mat"]


def lm_tokenizer(family: str, folder: Path) -> dict[str, Any]:
    """Write a tiny tokenizer as the family ships one; -> the config ids it needs. Qwen2:
    transformers' own Qwen2Tokenizer (byte-level BPE), which AutoTokenizer always uses for
    qwen2 folders; LLaMA/Mistral: a word-level tokenizer.json whose <unk>, <s>, </s> are
    special tokens, with LLaMA's BOS template."""
    from test_llama import tiny_llama_tokenizer
    from tokenizers import Tokenizer
    from tokenizers.pre_tokenizers import ByteLevel

    if family == "qwen2":
        alphabet = sorted(ByteLevel.alphabet())
        vocab = {c: i for i, c in enumerate(alphabet)}
        merges = [("t", "h"), ("th", "e"), ("a", "t"), ("Ġ", "c"), ("Ġc", "at")]
        vocab.update({a + b: len(alphabet) + i for i, (a, b) in enumerate(merges)})
        vocab["<|endoftext|>"] = len(vocab)
        transformers.Qwen2Tokenizer(vocab=vocab, merges=merges).save_pretrained(folder)
        return {"vocab_size": 300, "bos_token_id": None, "eos_token_id": len(vocab) - 1}
    tiny_llama_tokenizer(folder / "tokenizer.json")
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.add_special_tokens(["<unk>", "<s>", "</s>"])
    tokenizer.save(str(folder / "tokenizer.json"))
    return {}


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_lm_export_round_trip(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                              family: str) -> None:
    from test_llama import hf_model

    source = tmp_path / "hf"
    source.mkdir()
    ids = lm_tokenizer(family, source)
    extra = {"sliding_window": 64} if family == "mistral" else {}
    hf_model(family, **extra, **ids).save_pretrained(source)
    model, out = round_trip(capsys, source, "hf-llama", tmp_path)
    assert {p.name for p in out.iterdir()} >= {
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
        "special_tokens_map.json"}

    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    ours = model.preprocess("text", LM_TEXTS)
    for row, text in enumerate(LM_TEXTS):
        theirs = tokenizer(text)["input_ids"]
        assert ours["ids"][row, : len(theirs)].tolist() == theirs
        assert int(ours["mask"][row].sum()) == len(theirs)
    back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(back).__name__ == {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                                   "qwen2": "Qwen2ForCausalLM"}[family]
    with torch.no_grad():
        mine = model({"text": ours}).heads["lm"]
        reference = back(input_ids=ours["ids"], attention_mask=ours["mask"].long()).logits
    mask = ours["mask"]
    torch.testing.assert_close(mine[mask], reference[mask], atol=1e-4, rtol=0)


def test_clip_export_round_trip(capsys: pytest.CaptureFixture[str], hf_clip: tuple[Any, Path],
                                tmp_path: Path) -> None:
    hf, folder = hf_clip
    copy = tmp_path / "source"
    shutil.copytree(folder, copy)
    model, out = round_trip(capsys, copy, "hf-clip", tmp_path)
    shutil.rmtree(copy)  # the export needs nothing from the source folder
    back = transformers.CLIPModel.from_pretrained(out).eval()
    for name, value in hf.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    encoded = tokenizer(TEXTS, padding="max_length", max_length=CONTEXT, truncation=True,
                        return_tensors="pt")
    assert torch.equal(model.preprocess("text", TEXTS)["ids"], encoded["input_ids"])
    images = pixels(seed=7)
    ours = mm_outputs(model, images, TEXTS)
    theirs = hf_outputs(back, images, encoded["input_ids"], encoded["attention_mask"])
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_byte_text_clip_exports_an_equivalent_tokenizer(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A CLIP trained from scratch with byte-text: the export's tokenizer.json gives
    byte-text's ids in transformers, and the folder imports back to the same weights."""
    model = mmcore.build("clip-tiny").eval()
    ckpt = mmcore.save(model, tmp_path / "clip-tiny.safetensors")
    out = tmp_path / "export"
    cli(capsys, "export", ckpt, "--format", "hf-clip", "--out", out)
    again = tmp_path / "again.safetensors"
    cli(capsys, "import", out, "--out", again)
    reimported = mmcore.load(again).eval()
    same_state(model, reimported)
    texts = ["A red Circle", "ünïcode text", "", "x" * 80]
    length = model.preprocessors["text"].context_length
    ours = model.preprocess("text", texts)
    encoded = transformers.AutoTokenizer.from_pretrained(out)(
        texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    assert torch.equal(ours["ids"][:3], encoded["input_ids"][:3])
    assert torch.equal(ours["mask"], encoded["attention_mask"].bool())
    assert torch.equal(reimported.preprocess("text", texts)["ids"], ours["ids"])
    back = transformers.CLIPModel.from_pretrained(out).eval()
    with torch.no_grad():
        theirs = back.get_text_features(input_ids=ours["ids"],
                                        attention_mask=ours["mask"].long()).pooler_output
        mine = model.embed("text", ours)
    torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=0)


def test_whisper_export_round_trip(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from mmcore_whisper.testing import audio_features, write_random_whisper
    from mmcore_whisper.transcribe import encode, whisper_head

    source = tmp_path / "hf"
    hf = write_random_whisper(source)
    model, out = round_trip(capsys, source, "hf-whisper", tmp_path)
    again = mmcore.load(tmp_path / "again.safetensors")
    tokens = {k: v for k, v in again.spec.heads["decoder"].params["tokens"].items()
              if k != "tokenizer"}
    assert tokens == {k: v for k, v in model.spec.heads["decoder"].params["tokens"].items()
                      if k != "tokenizer"}
    back = transformers.WhisperForConditionalGeneration.from_pretrained(out).eval()
    assert sorted(back.state_dict()) == sorted(hf.state_dict())
    for name, value in hf.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["lang_to_id"] == hf.generation_config.lang_to_id

    features = audio_features(2)
    prompt = torch.tensor([[257, 258, 262, 266, 40, 41], [257, 259, 261, 266, 50, 51]])
    head = whisper_head(model)
    with torch.no_grad():
        theirs = back(input_features=features, decoder_input_ids=prompt).logits
        mine = head.decode(prompt, encode(model, head, features))
    torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=0)

    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    from tokenizers import Tokenizer

    reference = Tokenizer.from_file(str(source / "tokenizer.json"))
    for text in ["hello world", "<|en|><|transcribe|> x"]:
        assert tokenizer(text)["input_ids"] == reference.encode(text).ids
    extractor = transformers.WhisperFeatureExtractor.from_pretrained(out)
    wave = np.random.default_rng(0).standard_normal(16_000).astype(np.float32) * 0.1
    ours = model.preprocess("audio", [(wave, 16_000)])
    ours = ours["features"] if isinstance(ours, dict) else ours
    ref = extractor(wave, sampling_rate=16_000, return_tensors="pt")["input_features"]
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def llava_tokenizer(path: Path, image_id: int, vocab_size: int) -> None:
    """A word-level tokenizer.json with <unk> <s> </s> and <image> at ``image_id`` as
    special tokens, LLaMA's BOS template, and the words of the chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = ["USER", "ASSISTANT", ":", "the", "cat", "sat", "on", "a", "mat", "what", "?"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    vocab.update({f"w{i}": i for i in range(len(vocab), vocab_size) if i != image_id})
    vocab["<image>"] = image_id
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer.add_special_tokens(["<unk>", "<s>", "</s>", "<image>"])
    tokenizer.save(str(path))


def test_llava_export_round_trip(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from test_llava_import import IMAGE_ID, PATCHES, VOCAB, hf_llava, prompts

    source = tmp_path / "hf"
    hf = hf_llava()
    hf.save_pretrained(source)
    llava_tokenizer(source / "tokenizer.json", IMAGE_ID, VOCAB)
    model, out = round_trip(capsys, source, "hf-llava", tmp_path)
    back = transformers.LlavaForConditionalGeneration.from_pretrained(out).eval()
    assert sorted(back.state_dict()) == sorted(hf.state_dict())
    for name, value in hf.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name

    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    for prompt in ["the cat sat", "what ? a mat"]:
        ours = model.preprocess("text", [prompt])
        theirs = tokenizer(f"USER: {prompt} ASSISTANT:")["input_ids"]
        assert ours["ids"][0, : int(ours["mask"][0].sum())].tolist() == theirs
    batch = model.preprocess("text", ["<image> what ? the cat"])
    assert int((batch["ids"] == IMAGE_ID).sum()) == PATCHES
    images = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    ids, mask = prompts()
    pixels = images.expand(2, -1, -1, -1)
    with torch.no_grad():
        for text, image in ((batch, images), ({"ids": ids, "mask": mask}, pixels)):
            mine = model({"image": image, "text": text}).heads["lm"]
            ref = back(input_ids=text["ids"], attention_mask=text["mask"].long(),
                       pixel_values=image).logits
            real = text["mask"]
            torch.testing.assert_close(mine[real], ref[real], atol=1e-4, rtol=0)


def test_clap_export_round_trip(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from test_clap import FEATURES, tiny_hf_clap, waveforms

    source = tmp_path / "hf"
    hf = tiny_hf_clap(source)
    model, out = round_trip(capsys, source, "hf-clap", tmp_path)
    back = transformers.ClapModel.from_pretrained(out).eval()
    for name, value in hf.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name
    texts = ["the sound of a dog barking", "rain", "a cat meowing loudly on a window"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    length = model.preprocessors["text"].context_length
    encoded = tokenizer(texts, padding="max_length", max_length=length, truncation=True,
                        return_tensors="pt")
    ours = model.preprocess("text", texts)
    assert torch.equal(ours["ids"], encoded["input_ids"])
    extractor = transformers.ClapFeatureExtractor.from_pretrained(out)
    assert {k: extractor.to_dict()[k] for k in FEATURES} == {
        k: transformers.ClapFeatureExtractor(**FEATURES).to_dict()[k] for k in FEATURES}
    features = extractor(waveforms(), sampling_rate=8000, return_tensors="pt")["input_features"]
    audio = model.preprocess("audio", waveforms())
    torch.testing.assert_close(audio, features[:, 0], atol=1e-4, rtol=0)
    with torch.no_grad():
        output = model({"audio": audio, "text": ours})
        per_audio, _ = model.objectives["contrastive"].logits(output)
        expected = back(input_ids=ours["ids"], attention_mask=ours["mask"].long(),
                        input_features=features)
    torch.testing.assert_close(per_audio, expected.logits_per_audio, atol=1e-4, rtol=0)


def test_byte_text_lm_exports_an_equivalent_tokenizer(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """llama-tiny (byte-text, trained from scratch): transformers' tokenizer of the export
    gives byte-text's ids, its LlamaForCausalLM the same logits; the import is the same."""
    model = mmcore.build("llama-tiny").eval()
    ckpt = mmcore.save(model, tmp_path / "llama-tiny.safetensors")
    out = tmp_path / "export"
    cli(capsys, "export", ckpt, "--format", "hf-llama", "--out", out)
    cli(capsys, "import", out, "--out", tmp_path / "again.safetensors")
    same_state(model, mmcore.load(tmp_path / "again.safetensors"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    ours = model.preprocess("text", ["Hello, World", "ünïcode"])
    for row, text in enumerate(["Hello, World", "ünïcode"]):
        theirs = tokenizer(text)["input_ids"]
        assert ours["ids"][row, : int(ours["mask"][row].sum())].tolist() == theirs
    back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        mine = model({"text": ours}).heads["lm"]
        reference = back(input_ids=ours["ids"], attention_mask=ours["mask"].long()).logits
    torch.testing.assert_close(mine[ours["mask"]], reference[ours["mask"]], atol=1e-4, rtol=0)


def test_an_lm_without_a_tokenizer_exports_its_weights_with_a_warning(tmp_path: Path) -> None:
    from test_llama import hf_model

    from mmcore.convert import export_model, import_model

    hf_model().save_pretrained(tmp_path / "hf")  # no tokenizer.json
    model = import_model(tmp_path / "hf")
    with pytest.warns(UserWarning, match="no Hugging Face tokenizer: exported the weights"):
        export_model(model, tmp_path / "out", "hf-llama")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "config.json", "model.safetensors"]
    same_state(model, import_model(tmp_path / "out"))


def test_clip_bpe_files_travel_with_the_checkpoint(hf_clip: tuple[Any, Path],
                                                   tmp_path: Path) -> None:
    """clip-bpe's vocab.json and merges.txt (as the diffusers importer names them) are
    embedded too: same ids after the files are deleted."""
    tokenizer = json.loads((hf_clip[1] / "tokenizer.json").read_text())
    files = tmp_path / "tokenizer"
    files.mkdir()
    (files / "vocab.json").write_text(json.dumps(tokenizer["model"]["vocab"]))
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]
    (files / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    spec = mmcore.load_spec("clip-tiny").to_dict()
    text = spec["modalities"]["text"]
    text["preprocessor"] = {"type": "clip-bpe", "vocab": str(files / "vocab.json"),
                            "merges": str(files / "merges.txt"),
                            "context_length": text["tokenizer"]["context_length"]}
    text["tokenizer"]["vocab_size"] = max(text["tokenizer"]["vocab_size"],
                                          len(tokenizer["model"]["vocab"]))
    model = mmcore.build(spec)
    before = model.preprocess("text", TEXTS)
    path = mmcore.save(model, tmp_path / "m.safetensors")
    shutil.rmtree(files)
    loaded = mmcore.load(path)
    assert sorted(model_assets(loaded)) == ["modalities.text.preprocessor.merges",
                                            "modalities.text.preprocessor.vocab"]
    after = loaded.preprocess("text", TEXTS)
    assert torch.equal(before["ids"], after["ids"])
    assert int((before["ids"] != before["ids"][0, -1]).sum()) > len(TEXTS) * 2  # real ids

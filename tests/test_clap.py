"""CLAP (mmcore_clap): parity with transformers' ClapModel and ClapFeatureExtractor, the
``hf-clap`` importer, zero-shot audio classification over an audio folder, broken inputs."""

from __future__ import annotations

import json
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

import mmcore
from mmcore.analysis import analyse
from mmcore.cli import main
from mmcore.convert import find_converter, import_model
from mmcore.errors import CheckpointError
from mmcore.summary import count_parameters
from mmcore_clap.convert import AUDIO_DEFAULTS, TEXT_DEFAULTS, spec_from_hf_clap_config
from mmcore_clap.preprocess import ClapAudioConfig, ClapAudioPreprocessor

try:  # a test dependency: the reference implementation
    import transformers
except ImportError:  # pragma: no cover
    transformers = None
needs_transformers = pytest.mark.skipif(transformers is None, reason="needs transformers")

SPECIAL = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
CORPUS = ["the sound of a dog barking", "a cat meowing loudly", "rain on a window",
          "this is a sound of birds", "a siren far away"]
TEXT = {"vocab_size": 300, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 32, "max_position_embeddings": 40}
# 32 x 32 spectrogram image of 16 mels (2 time chunks), 8 x 8 patch grid, three stages
AUDIO = {"num_mel_bins": 16, "spec_size": 32, "patch_size": 4, "patch_stride": [4, 4],
         "window_size": 2, "depths": [2, 2, 1], "num_attention_heads": [2, 2, 4],
         "patch_embeds_hidden_size": 8, "hidden_size": 32, "enable_fusion": False}
# 1 s at 8 kHz, hop 128 -> 63 frames (stretched to the image's 64)
FEATURES = {"feature_size": 16, "sampling_rate": 8000, "hop_length": 128, "max_length_s": 1,
            "fft_window_size": 256, "frequency_min": 0, "frequency_max": 4000,
            "truncation": "rand_trunc"}
PROJECTION = 12


def write_tokenizer(path: Path) -> Tokenizer:
    """A tiny RoBERTa-style byte-level BPE tokenizer.json (<s> ... </s>, <pad> = 1)."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TEXT["vocab_size"], special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(CORPUS, trainer)
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    assert tokenizer.get_vocab_size() == TEXT["vocab_size"]
    tokenizer.save(str(path))
    return tokenizer


def tiny_hf_clap(folder: Path) -> Any:
    """A random tiny HF ClapModel saved with its feature extractor and tokenizer; every
    parameter and the batch-norm statistics are perturbed so a mis-mapped tensor shows."""
    config = transformers.ClapConfig(text_config=TEXT, audio_config=AUDIO,
                                     projection_dim=PROJECTION)
    torch.manual_seed(0)
    model = transformers.ClapModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        norm = model.audio_model.audio_encoder.batch_norm
        norm.running_mean.normal_(-40.0, 5.0)
        norm.running_var.uniform_(50.0, 150.0)
    model.save_pretrained(folder)
    transformers.ClapFeatureExtractor(**FEATURES).save_pretrained(folder)
    write_tokenizer(folder / "tokenizer.json")
    return model


def waveforms(seed: int = 0) -> list[np.ndarray]:
    """Shorter than, exactly and just under 1 s at 8 kHz."""
    rng = np.random.default_rng(seed)
    return [(0.3 * rng.standard_normal(n)).astype(np.float32) for n in (3000, 8000, 7001)]


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    if transformers is None:
        pytest.skip("needs transformers")
    folder = tmp_path_factory.mktemp("hf-clap")
    return folder, tiny_hf_clap(folder)


# -- parity with transformers -------------------------------------------------------------


@needs_transformers
def test_import_matches_hf_clap(hf_folder: tuple[Path, Any], tmp_path: Path) -> None:
    folder, hf = hf_folder
    out = tmp_path / "clap.safetensors"
    assert main(["import", str(folder), "--out", str(out)]) == 0
    model = mmcore.load(out).eval()
    texts = ["the sound of a dog barking", "rain", "a cat meowing loudly on a window"]
    audio = model.preprocess("audio", waveforms())  # (B, frames, n_mels)
    ids = model.preprocess("text", texts)
    reference = transformers.ClapFeatureExtractor(**FEATURES)(
        waveforms(), sampling_rate=8000, return_tensors="pt")["input_features"]
    assert torch.allclose(audio, reference[:, 0], atol=1e-4)
    with torch.no_grad():
        output = model({"audio": audio, "text": ids})
        per_audio, per_text = model.objectives["contrastive"].logits(output)
        expected = hf(input_ids=ids["ids"], attention_mask=ids["mask"].long(),
                      input_features=reference)
    assert ids["ids"][0, 0] == 0 and ids["ids"][1, 2] == 2 and ids["ids"][1, 3] == 1
    for name, want in (("audio", expected.audio_embeds), ("text", expected.text_embeds)):
        got = F.normalize(output.embeddings[name], dim=-1)
        assert torch.allclose(got, want, atol=1e-5), name
    assert torch.allclose(per_audio, expected.logits_per_audio, atol=1e-5)
    assert torch.allclose(per_text, expected.logits_per_text, atol=1e-5)
    assert float(expected.logits_per_audio.abs().max()) > 1.0  # a real comparison


@needs_transformers
def test_sharded_checkpoint_imports_with_parity(hf_folder: tuple[Path, Any],
                                                tmp_path: Path) -> None:
    """save_pretrained(max_shard_size=...) writes model.safetensors.index.json + shards;
    the import reads them through mmcore.convert.hf and matches transformers."""
    folder, hf = hf_folder
    sharded = tmp_path / "sharded"
    hf.save_pretrained(sharded, max_shard_size="100KB")
    for name in ("tokenizer.json", "preprocessor_config.json"):
        (sharded / name).write_bytes((folder / name).read_bytes())
    assert not (sharded / "model.safetensors").exists()
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    model = import_model(sharded).eval()
    texts = ["a cat meowing loudly", "rain on a window"]
    ids = model.preprocess("text", texts)
    reference = transformers.ClapFeatureExtractor(**FEATURES)(
        waveforms(1)[:2], sampling_rate=8000, return_tensors="pt")["input_features"]
    with torch.no_grad():
        output = model({"audio": reference[:, 0], "text": ids})
        expected = hf(input_ids=ids["ids"], attention_mask=ids["mask"].long(),
                      input_features=reference)
    for name, want in (("audio", expected.audio_embeds), ("text", expected.text_embeds)):
        got = F.normalize(output.embeddings[name], dim=-1)
        assert torch.allclose(got, want, atol=1e-5), name
    assert float((expected.audio_embeds - expected.text_embeds).abs().max()) > 0.1


@needs_transformers
def test_imported_spec_and_weights(hf_folder: tuple[Path, Any]) -> None:
    folder, hf = hf_folder
    name, _ = find_converter(folder)
    assert name == "hf-clap"
    model = import_model(folder)
    spec = model.spec
    assert spec.modalities["audio"].preprocessor.params["mel_scale"] == "slaney"
    assert spec.modalities["text"].preprocessor.params["context_length"] == 40 - 1 - 1
    total, _ = count_parameters(model)
    assert total == sum(p.numel() for p in hf.parameters())
    assert analyse(spec).parameters == total  # every component's analytic cost is exact
    scales = model.objectives["contrastive"].logit_scale
    assert torch.equal(scales[0], torch.stack([hf.logit_scale_a, hf.logit_scale_t]).detach())


@needs_transformers
@pytest.mark.parametrize(("params", "truncation"), [
    ({"mel_scale": "slaney"}, "rand_trunc"),
    ({"mel_scale": "htk", "padding": "repeat"}, "fusion"),
    ({"mel_scale": "slaney", "padding": "pad", "f_min": 50.0}, "rand_trunc"),
])
def test_clap_audio_matches_the_feature_extractor(params: dict[str, Any],
                                                  truncation: str) -> None:
    cfg = ClapAudioConfig(sample_rate=48_000, n_fft=1024, hop_length=480, n_mels=64,
                          max_length_s=2.0, **params)
    extractor = transformers.ClapFeatureExtractor(
        feature_size=64, sampling_rate=48_000, hop_length=480, fft_window_size=1024,
        frequency_min=cfg.f_min, frequency_max=cfg.f_max, truncation=truncation,
        padding=cfg.padding)
    rng = np.random.default_rng(1)
    items = [(0.2 * rng.standard_normal(n)).astype(np.float32) for n in (20_000, 96_000)]
    items.append(np.sin(np.arange(50_000) * 0.07).astype(np.float32))
    ours = ClapAudioPreprocessor(cfg)(items)
    theirs = extractor(items, max_length=cfg.max_samples, sampling_rate=48_000,
                       return_tensors="pt")["input_features"][:, 0]
    assert ours.shape == (3, 201, 64) == theirs.shape
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=0)
    assert float(theirs.max() - theirs.min()) > 50  # dB values with real structure


def test_long_audio_is_cropped_and_wav_paths_and_rates_load(tmp_path: Path) -> None:
    cfg = ClapAudioConfig(sample_rate=8000, n_fft=256, hop_length=128, n_mels=16,
                          max_length_s=1.0, f_min=0, f_max=4000)
    run = ClapAudioPreprocessor(cfg)
    long = (0.3 * np.random.default_rng(2).standard_normal(20_000)).astype(np.float32)
    assert torch.equal(run([long]), run([long[:8000]]))  # crop: start
    random = ClapAudioPreprocessor(cfg.model_copy(update={"crop": "random"}))
    assert not torch.equal(random([long]), run([long]))
    pcm = (long[:6000] * 32767).astype("<i2")
    path = tmp_path / "clip.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(pcm.tobytes())
    from_file, from_ints = run([path]), run([(pcm, 8000)])
    assert torch.allclose(from_file, from_ints, atol=1e-4)
    upsampled = run([(long[:3000], 4000)])  # 0.75 s at 4 kHz -> 8 kHz, repeat-padded
    assert upsampled.shape == (1, 63, 16) and torch.isfinite(upsampled).all()


# -- zero-shot audio classification from a folder (no transformers needed) ----------------


def tiny_clap_spec(folder: Path) -> dict[str, Any]:
    write_tokenizer(folder / "tokenizer.json")
    config = {"projection_dim": PROJECTION, "logit_scale_init_value": 1 / 0.07,
              "projection_hidden_act": "relu",
              "text_config": {**TEXT_DEFAULTS, **TEXT}, "audio_config": {**AUDIO_DEFAULTS, **AUDIO}}
    preprocessor = {"n_mels": 16, "sample_rate": 8000, "hop_length": 128, "n_fft": 256,
                    "max_length_s": 1.0, "f_min": 0, "f_max": 4000}
    return spec_from_hf_clap_config(config, tokenizer_json=folder / "tokenizer.json",
                                    preprocessor=preprocessor)


def write_wav(path: Path, samples: np.ndarray, rate: int = 8000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def audio_folder(root: Path) -> list[tuple[Path, int]]:
    """root/{dog_bark,rain,siren}/*.wav (tones of differing pitch), plus noise to skip."""
    files = []
    t = np.arange(6000) / 8000
    for label, (name, hz) in enumerate([("dog_bark", 300), ("rain", 900), ("siren", 2000)]):
        for k in range(2 + label % 2):
            path = root / name / f"{k}.wav"
            write_wav(path, 0.4 * np.sin(2 * np.pi * hz * (1 + 0.05 * k) * t))
            files.append((path, label))
    (root / "rain" / "notes.txt").write_text("not audio")
    (root / ".cache").mkdir()
    return files


def test_zero_shot_on_an_audio_folder_matches_a_hand_computation(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(3)
    model = mmcore.build(tiny_clap_spec(tmp_path)).eval()
    checkpoint = mmcore.save(model, tmp_path / "clap.safetensors")
    files = audio_folder(tmp_path / "sounds")
    templates = ["this is a sound of {}.", "the {}."]
    data = json.dumps({"type": "audio-folder", "root": str(tmp_path / "sounds"),
                       "templates": templates})
    capsys.readouterr()
    assert main(["eval", str(checkpoint), "--task", "zero-shot", "--data", data,
                 "--no-progress", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    with torch.no_grad():  # by hand: prompt ensembles vs each file's embedding
        classes = torch.stack([
            F.normalize(F.normalize(model.embed("text", model.preprocess(
                "text", [t.format(name) for t in templates])), dim=-1).mean(0), dim=0)
            for name in ("dog bark", "rain", "siren")])  # (C, E)
        sounds = F.normalize(model.embed("audio", model.preprocess(
            "audio", [str(p) for p, _ in files])), dim=-1)  # (N, E)
    predicted = (sounds @ classes.t()).argmax(1)
    labels = torch.tensor([label for _, label in files])
    assert metrics["modalities"] == ["audio", "text"]
    assert metrics["samples"] == len(files) == 7 and metrics["num_classes"] == 3
    assert metrics["templates"] == 2
    assert metrics["top1"] == pytest.approx(float((predicted == labels).float().mean()))
    assert metrics["top5"] == 1.0 and metrics["chance_top1"] == pytest.approx(1 / 3)


def test_audio_folder_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mmcore.data import open_dataset
    from mmcore.spec import ComponentRef

    def folder(root: Path, **params: Any) -> Any:
        return open_dataset(ComponentRef(type="audio-folder", root=str(root), **params))

    with pytest.raises(ValueError, match="no folder at"):
        folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="no class subfolders"):
        folder(tmp_path)
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "a.mp3").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"no \.wav files"):
        folder(tmp_path)
    with pytest.raises(ValueError, match="exactly one"):
        folder(tmp_path, templates=["no slot"])
    assert main(["eval", str(tmp_path), "--task", "zero-shot", "--data", "[1, 2]"]) == 2
    assert "YAML mapping with a type" in capsys.readouterr().err


# -- broken inputs ------------------------------------------------------------------------


def _clap_folder(tmp_path: Path, audio: dict[str, Any] | None = None,
                 model_type: str = "clap") -> Path:
    config = {"model_type": model_type, "projection_dim": PROJECTION,
              "text_config": TEXT, "audio_config": {**AUDIO, **(audio or {})}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_fused_clap_is_refused_by_name(tmp_path: Path) -> None:
    folder = _clap_folder(tmp_path, {"enable_fusion": True, "fusion_type": "aff_2d"})
    assert find_converter(folder)[0] == "hf-clap"
    with pytest.raises(CheckpointError, match=r"fused CLAP .*enable_fusion: true.*unfused"):
        import_model(folder)
    assert main(["import", str(folder), "--out", str(tmp_path / "x.safetensors")]) == 1


def test_missing_weights_and_unknown_keys(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    folder = _clap_folder(tmp_path)
    with pytest.raises(CheckpointError, match=r"no model\.safetensors"):
        import_model(folder, "hf-clap")
    save_file({"logit_scale_a": torch.tensor(1.0), "logit_scale_t": torch.tensor(1.0),
               "audio_model.classifier.weight": torch.zeros(2, 2)},
              str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"no mmcore equivalent.*classifier"):
        import_model(folder, "hf-clap")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read"):
        import_model(folder, "hf-clap")


def test_other_model_types_are_not_detected(tmp_path: Path) -> None:
    folder = _clap_folder(tmp_path, model_type="clip")
    from mmcore_clap.convert import HFClapConverter

    assert not HFClapConverter().detect(folder)
    with pytest.raises(CheckpointError, match="not a CLAP config"):
        import_model(folder, "hf-clap")


def test_bad_audio_inputs_are_named() -> None:
    run = ClapAudioPreprocessor(ClapAudioConfig(sample_rate=8000, n_fft=256, hop_length=128,
                                                n_mels=16, max_length_s=1.0, f_max=4000))
    with pytest.raises(ValueError, match="empty"):
        run([np.zeros(0, dtype=np.float32)])
    with pytest.raises(ValueError, match="NaN"):
        run([np.array([0.0, np.nan] * 100)])
    with pytest.raises(ValueError, match="1-D"):
        run([np.zeros((2, 100))])
    with pytest.raises(TypeError, match="sample_rate: positive int"):
        run([(np.zeros(100), -5)])
    with pytest.raises(FileNotFoundError):
        run(["/nonexistent/file.wav"])
    with pytest.raises(ValueError, match="non-empty list"):
        run([])
    with pytest.raises(ValueError, match="f_min"):
        ClapAudioConfig(f_min=5000, f_max=4000)


def test_bad_model_inputs_and_configs_are_named(tmp_path: Path) -> None:
    model = mmcore.build(tiny_clap_spec(tmp_path)).eval()
    with pytest.raises(ValueError, match="100 frames exceed the 64"):
        model.tokenizers["audio"](torch.zeros(1, 100, 16))
    with pytest.raises(ValueError, match=r"\(B, frames, 16\)"):
        model.tokenizers["audio"](torch.zeros(1, 50, 12))
    with pytest.raises(ValueError, match="token ids must lie"):
        model.tokenizers["text"]({"ids": torch.tensor([[0, 300]])})
    with pytest.raises(ValueError, match="8x8 grid"):
        from mmcore.contract import Tokens

        model.encoders["audio"](Tokens(torch.zeros(1, 10, 8)))
    spec = tiny_clap_spec(tmp_path)
    spec["modalities"]["audio"]["encoder"]["window_size"] = 3
    with pytest.raises(mmcore.SpecError, match="multiple of window_size 3"):
        mmcore.load_spec(spec)
    spec = tiny_clap_spec(tmp_path)
    spec["modalities"]["audio"]["tokenizer"]["n_mels"] = 12
    with pytest.raises(mmcore.SpecError, match="multiple of n_mels"):
        mmcore.load_spec(spec)


@needs_transformers
def test_full_size_clap_counts_match() -> None:
    """laion/clap-htsat-unfused's architecture (HF defaults), on the meta device: the
    mmcore spec builds the same parameters, and its analytic cost counts them exactly."""
    with torch.device("meta"):
        hf = transformers.ClapModel(transformers.ClapConfig())
    config = {"projection_dim": 512, "logit_scale_init_value": 1 / 0.07,
              "projection_hidden_act": "relu", "text_config": TEXT_DEFAULTS,
              "audio_config": AUDIO_DEFAULTS}
    spec = mmcore.load_spec(spec_from_hf_clap_config(config))
    expected = sum(p.numel() for p in hf.parameters())
    assert expected == 153_492_890
    assert count_parameters(mmcore.build(spec, device="meta"))[0] == expected
    assert analyse(spec).parameters == expected

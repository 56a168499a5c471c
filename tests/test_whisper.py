"""Whisper: the hf-whisper converter, the whisper-decoder head, decoding and ``mmcore
transcribe``, checked token for token against transformers on tiny random checkpoints.

The checkpoints (mmcore_whisper.testing) have Whisper's token layout on a 256-byte text
vocabulary: <|endoftext|> 256, <|startoftranscript|> 257, languages en/de/fr 258-260,
<|translate|> 261, <|transcribe|> 262, ..., <|notimestamps|> 266, timestamps 267-1767.
"""

from __future__ import annotations

import json
import shutil
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mmcore.cli import main
from mmcore.convert import find_converter, import_model
from mmcore.errors import CheckpointError
from mmcore_whisper.convert import HFWhisperConverter, spec_from_folder
from mmcore_whisper.decoding import LogitRules, greedy
from mmcore_whisper.testing import audio_features, write_random_whisper
from mmcore_whisper.tokens import WhisperTokens
from mmcore_whisper.transcribe import (
    DecodeOptions,
    encode,
    split_segments,
    transcribe_features,
    whisper_head,
)

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

EOS, START, NO_TIMESTAMPS, BEGIN = 256, 257, 266, 267
Segments = list[tuple[float, float, list[int]]]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("whisper") / "tiny"
    write_random_whisper(path)
    return path


@pytest.fixture(scope="module")
def hf(folder: Path) -> Any:
    return transformers.WhisperForConditionalGeneration.from_pretrained(folder).eval()


@pytest.fixture(scope="module")
def ours(folder: Path) -> Any:
    return import_model(folder).eval()


@pytest.fixture(scope="module")
def clips() -> torch.Tensor:
    return audio_features(3, seed=1)  # (3, 80, 3000)


def hf_segments(hf: Any, features: torch.Tensor, **kwargs: Any) -> Segments:
    """transformers' segments (start, end, tokens) for one clip (1, n_mels, F)."""
    with torch.no_grad():
        out = hf.generate(features, return_segments=True, **kwargs)
    return [(float(s["start"]), float(s["end"]), s["tokens"].tolist())
            for s in out["segments"][0]]


def our_segments(model: Any, features: torch.Tensor, options: DecodeOptions) -> Segments:
    result = transcribe_features(model, features[0], options)
    return [(s.start, s.end, s.tokens) for s in result.segments]


def assert_same(ours_: Segments, theirs: Segments) -> None:
    assert [s[2] for s in ours_] == [s[2] for s in theirs]
    np.testing.assert_allclose([s[:2] for s in ours_], [s[:2] for s in theirs], atol=1e-9)


# -- the converter -------------------------------------------------------------------------


def test_spec_and_special_tokens_come_from_the_folder(folder: Path) -> None:
    converter = HFWhisperConverter()
    assert converter.detect(folder)
    assert not converter.detect(folder / "config.json")
    assert find_converter(folder)[0] == "hf-whisper"
    spec, state = converter.to_mmcore(folder)
    audio = spec["modalities"]["audio"]
    assert audio["tokenizer"] == {"type": "conv-stem", "width": 64, "n_mels": 80,
                                  "frames": 3000}
    assert audio["encoder"]["mlp_ratio"] == 4.0 and audio["encoder"]["layers"] == 2
    head = spec["heads"]["decoder"]
    assert (head["vocab_size"], head["max_positions"], head["ffn_dim"]) == (1768, 64, 256)
    tokens = head["tokens"]
    assert (tokens["eos"], tokens["start"], tokens["no_timestamps"]) == (EOS, START,
                                                                        NO_TIMESTAMPS)
    assert tokens["languages"] == {"en": 258, "de": 259, "fr": 260}
    assert tokens["tasks"] == {"transcribe": 262, "translate": 261}
    assert tokens["begin_suppress"] == [220, EOS]
    assert START in tokens["suppress"] and 265 in tokens["suppress"]
    assert (tokens["max_initial_timestamp_index"], tokens["max_length"]) == (50, 24)
    assert tokens["tokenizer"] == str((folder / "tokenizer.json").resolve())
    biases = [k for k in state if k.endswith("attn.k_proj.bias")]
    assert len(biases) == 2 and all(not state[k].any() for k in biases)  # encoder, zeros


def test_parameters_equal_transformers_plus_zero_key_biases(hf: Any, ours: Any,
                                                            tmp_path: Path) -> None:
    # transformers keeps the encoder's fixed sinusoids as a frozen parameter; mmcore's conv
    # stem keeps them as a saved buffer. mmcore's encoder k_proj has a (zero) bias.
    fixed = hf.model.encoder.embed_positions.weight.numel()
    assert sum(p.numel() for p in ours.parameters()) == \
        sum(p.numel() for p in hf.parameters()) - fixed + 2 * 64
    # whisper-tiny's shape: the analytic cost counts what is built, exactly
    from mmcore.spec import load_spec
    from mmcore.summary import summarize

    config = transformers.WhisperConfig(d_model=384, encoder_layers=4, decoder_layers=4,
                                        encoder_attention_heads=6, decoder_attention_heads=6,
                                        encoder_ffn_dim=1536, decoder_ffn_dim=1536)
    config.save_pretrained(tmp_path)
    summary = summarize(load_spec(spec_from_folder(tmp_path, config.to_dict())))
    with torch.device("meta"):
        reference = transformers.WhisperForConditionalGeneration(config)
    assert summary.cost is not None and summary.cost.parameters == summary.parameters
    fixed = 1500 * 384
    assert summary.parameters == sum(p.numel() for p in reference.parameters()) - fixed + 4 * 384
    assert summary.parameters == 37_760_640 - fixed + 4 * 384  # whisper-tiny


def test_encoder_and_decoder_logits_equal_transformers(hf: Any, ours: Any,
                                                       clips: torch.Tensor) -> None:
    head = whisper_head(ours)
    ids = torch.randint(0, 1768, (3, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = hf.model.encoder(clips).last_hidden_state
        audio = encode(ours, head, clips)
        torch.testing.assert_close(audio.x, theirs, atol=1e-4, rtol=1e-4)
        want = hf(encoder_outputs=(theirs,), decoder_input_ids=ids).logits
        torch.testing.assert_close(head.decode(ids, audio), want, atol=1e-4, rtol=1e-4)
        first = ours({"audio": clips}).heads["decoder"]  # the head: logits after the start
        torch.testing.assert_close(first, hf(encoder_outputs=(theirs,), decoder_input_ids=ids[
            :, :1].fill_(START)).logits[:, 0], atol=1e-4, rtol=1e-4)
    assert want.abs().max() > 1.0  # not a degenerate model


# -- decoding against transformers' generate ------------------------------------------------


@pytest.mark.parametrize("timestamps", [False, True])
def test_greedy_equals_transformers(hf: Any, ours: Any, clips: torch.Tensor,
                                    timestamps: bool) -> None:
    options = DecodeOptions(language="de", timestamps=timestamps, max_new_tokens=12)
    seen = set()
    for i in range(3):
        mine = our_segments(ours, clips[i : i + 1], options)
        assert_same(mine, hf_segments(hf, clips[i : i + 1], language="de", task="transcribe",
                                      max_new_tokens=12, return_timestamps=timestamps))
        seen.add(tuple(t for s in mine for t in s[2]))
        if timestamps:
            assert all(s[2][0] >= BEGIN for s in mine)  # segments open with a timestamp
    assert len(seen) == 3  # the clips decode differently


@pytest.mark.parametrize(("beams", "timestamps"), [(2, False), (3, True)])
def test_beam_search_equals_transformers(hf: Any, ours: Any, clips: torch.Tensor,
                                         beams: int, timestamps: bool) -> None:
    options = DecodeOptions(language="fr", timestamps=timestamps, max_new_tokens=10,
                            beam_size=beams)
    for i in range(2):
        assert_same(our_segments(ours, clips[i : i + 1], options),
                    hf_segments(hf, clips[i : i + 1], language="fr", task="transcribe",
                                max_new_tokens=10, return_timestamps=timestamps,
                                num_beams=beams))


def test_beam_search_differs_from_greedy_somewhere(ours: Any, clips: torch.Tensor) -> None:
    """A beam search that silently fell back to greedy would pass the test above only if
    transformers' did too; check the two searches really differ on these clips."""
    runs = [[our_segments(ours, clips[i : i + 1], DecodeOptions(
        language="fr", max_new_tokens=10, beam_size=b)) for i in range(3)] for b in (1, 3)]
    assert runs[0] != runs[1]


def test_language_detection_equals_transformers(hf: Any, ours: Any,
                                                clips: torch.Tensor) -> None:
    with torch.no_grad():
        detected = hf.detect_language(clips).tolist()
    for i in range(3):
        result = transcribe_features(ours, clips[i], DecodeOptions(max_new_tokens=8))
        assert result.language == {258: "en", 259: "de", 260: "fr"}[detected[i]]
        want = hf_segments(hf, clips[i : i + 1], task="transcribe", max_new_tokens=8)
        assert [s.tokens for s in result.segments] == [s[2] for s in want]


def test_translate_uses_the_translate_token(ours: Any, clips: torch.Tensor) -> None:
    tokens = whisper_head(ours).tokens
    assert tokens.prompt(language_id=259, task="translate", timestamps=False) == [
        START, 259, 261, NO_TIMESTAMPS]
    assert tokens.prompt(language_id=258, task="transcribe", timestamps=True) == [
        START, 258, 262]


def test_long_audio_is_decoded_in_windows_like_transformers(hf: Any, ours: Any) -> None:
    features = audio_features(1, frames=4600, seed=7)  # 46 s: two windows or more
    mine = our_segments(ours, features, DecodeOptions(language="en", timestamps=True,
                                                      max_new_tokens=10))
    assert_same(mine, hf_segments(hf, features, language="en", task="transcribe",
                                  max_new_tokens=10, return_timestamps=True))
    assert mine[-1][0] > 30.0  # reached the second window


def test_english_only_model(tmp_path: Path, clips: torch.Tensor) -> None:
    hf = write_random_whisper(tmp_path, english_only=True, seed=3)
    model = import_model(tmp_path).eval()
    tokens = whisper_head(model).tokens
    assert not tokens.multilingual and tokens.tasks == {}
    assert tokens.prompt(language_id=None, task="transcribe", timestamps=False) == [
        START, NO_TIMESTAMPS]
    for timestamps in (False, True):
        options = DecodeOptions(timestamps=timestamps, max_new_tokens=10)
        assert_same(our_segments(model, clips[:1], options),
                    hf_segments(hf, clips[:1], max_new_tokens=10,
                                return_timestamps=timestamps))
    with pytest.raises(ValueError, match="English-only"):
        transcribe_features(model, clips[0], DecodeOptions(language="en"))
    with pytest.raises(ValueError, match="cannot translate"):
        transcribe_features(model, clips[0], DecodeOptions(task="translate"))


def test_128_mel_bins_like_large_v3(tmp_path: Path) -> None:
    hf = write_random_whisper(tmp_path, n_mels=128, layers=1, seed=5)
    model = import_model(tmp_path).eval()
    assert model.spec.modalities["audio"].preprocessor.params["n_mels"] == 128
    features = audio_features(1, n_mels=128, seed=2)
    options = DecodeOptions(language="en", timestamps=True, max_new_tokens=8)
    assert_same(our_segments(model, features, options),
                hf_segments(hf, features, language="en", task="transcribe", max_new_tokens=8,
                            return_timestamps=True))


# -- KV cache, rules and segments -----------------------------------------------------------


def test_kv_cache_equals_recomputing_the_sequence(ours: Any, clips: torch.Tensor) -> None:
    head = whisper_head(ours)
    with torch.no_grad():
        audio = encode(ours, head, clips)
        prompt = [START, 258, 262, NO_TIMESTAMPS]
        rules = LogitRules(head.tokens, 1768, len(prompt), timestamps=False)
        cached = greedy(head, audio, prompt, rules, 20)
        assert cached == greedy(head, audio, prompt, rules, 20, use_cache=False)
        assert max(len(c) for c in cached) == 20 and len({tuple(c) for c in cached}) == 3
        ids = torch.tensor([prompt + cached[0][:10]])
        full = head.decode(ids, encode(ours, head, clips[:1]))  # (1, 14, V)
        cache = head.start_cache(encode(ours, head, clips[:1]), max_length=14)
        steps = [head.step(ids[:, :4], cache)] + [head.step(ids[:, i : i + 1], cache)
                                                  for i in range(4, 14)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 14


def test_logit_rules_equal_transformers_processors() -> None:
    """Suppression and timestamp rules against transformers' processors, on random
    sequences of text, special and timestamp tokens."""
    from transformers.generation.logits_process import (
        SuppressTokensAtBeginLogitsProcessor,
        SuppressTokensLogitsProcessor,
        WhisperTimeStampLogitsProcessor,
    )

    vocab, begin, prompt = 40, 25, [21, 22]  # eos 20, <|notimestamps|> 24, timestamps 25+
    tokens = WhisperTokens(eos=20, start=21, no_timestamps=24, suppress=[3, 23],
                           begin_suppress=[5, 20], max_initial_timestamp_index=4)
    config = transformers.GenerationConfig(eos_token_id=20, no_timestamps_token_id=24,
                                           max_initial_timestamp_index=4)
    processors = [SuppressTokensAtBeginLogitsProcessor([5, 20], 2),
                  SuppressTokensLogitsProcessor([3, 23]),
                  WhisperTimeStampLogitsProcessor(config, begin_index=2)]
    rules = LogitRules(tokens, vocab, len(prompt), timestamps=True)
    generator = torch.Generator().manual_seed(0)
    checked = 0
    for length in range(7):
        for _ in range(12):
            pool = torch.tensor([1, 2, 6, 7, 20, begin, begin + 2, begin + 5, begin + 9])
            tail = pool[torch.randint(0, len(pool), (length,), generator=generator)]
            ids = torch.cat([torch.tensor(prompt), tail])[None]
            scores = 3 * torch.randn(1, vocab, generator=generator)
            want = scores.clone()
            for processor in processors:
                want = processor(ids, want)
            got = rules([tail.tolist()], scores)
            torch.testing.assert_close(got, want)
            checked += int(torch.isinf(want).sum())
    assert checked > 1000  # the rules did forbid tokens


def test_timestamp_rules_by_hand() -> None:
    tokens = WhisperTokens(eos=20, start=21, no_timestamps=24, max_initial_timestamp_index=2)
    rules = LogitRules(tokens, 40, 2, timestamps=True)
    flat = torch.zeros(1, 40)
    first = rules([[]], flat)[0]
    assert torch.isfinite(first).nonzero().flatten().tolist() == [25, 26, 27]
    likely_eos = flat.clone()
    likely_eos[0, 20] = 5.0
    after_single = rules([[1, 25, 7, 30]], likely_eos)[0]  # a closing timestamp or EOS next
    assert torch.isinf(after_single[:20]).all() and after_single[20] == 5.0
    assert torch.isinf(after_single[24:30]).all() and (after_single[30:] == 0).all()
    # flat scores: the ten allowed timestamps together outweigh EOS, so one is forced
    forced = rules([[1, 25, 7, 30]], flat)[0]
    assert torch.isinf(forced[:25]).all() and (forced[30:] == 0).all()
    after_pair = rules([[25, 7, 30, 30]], flat)[0]  # text next
    assert torch.isinf(after_pair[25:]).all() and (after_pair[:20] == 0).all()


def test_split_segments_follows_timestamps() -> None:
    t = BEGIN
    # two closed segments and an unfinished tail: seek to the last timestamp (frames)
    segments, moved = split_segments([t, 1, 2, t + 50, t + 50, 3, t + 100, t + 100, 4],
                                     BEGIN, 10.0, 3000)
    assert [(s.start, s.end, s.tokens) for s in segments] == [
        (10.0, 11.0, [t, 1, 2, t + 50]), (11.0, 12.0, [t + 50, 3, t + 100, t + 100])]
    assert moved == 200
    # a single timestamp at the end: no speech after it, move the whole window
    segments, moved = split_segments([t, 1, t + 50, t + 50, 2, t + 75], BEGIN, 0.0, 2400)
    assert [(s.start, s.end) for s in segments] == [(0.0, 1.0), (1.0, 1.5)] and moved == 2400
    # no timestamps: one segment spanning the window; seek moves by the window
    segments, moved = split_segments([1, 2, 3], BEGIN, 30.0, 1600)
    assert [(s.start, s.end, s.tokens) for s in segments] == [(30.0, 46.0, [1, 2, 3])]
    assert moved == 1600


def test_split_segments_equals_transformers() -> None:
    """Against transformers' own segment splitting, on random windows of text and
    timestamp tokens (pairs, single endings, none) and window lengths."""
    from transformers.models.whisper.generation_whisper import WhisperGenerationMixin

    generator = np.random.default_rng(0)
    for trial in range(200):
        length, window = int(generator.integers(1, 12)), int(generator.integers(1, 3001))
        text = generator.integers(0, 256, length)
        stamps = np.sort(generator.integers(BEGIN, BEGIN + 1500, length))
        tokens = np.where(generator.random(length) < 0.4, stamps, text).tolist()
        offset = float(generator.integers(0, 5000)) * 0.01
        want, moved = WhisperGenerationMixin._retrieve_segment(
            seek_sequence=torch.tensor(tokens), seek_outputs=[None],
            time_offset=torch.tensor([offset], dtype=torch.float64), timestamp_begin=BEGIN,
            seek_num_frames=torch.tensor([window]), time_precision=0.02,
            time_precision_features=0.01, input_stride=2, prev_idx=0, idx=0,
            return_token_timestamps=False, decoder_input_ids=torch.zeros(1, 4))
        got, our_moved = split_segments(tokens, BEGIN, offset, window)
        assert [s.tokens for s in got] == [w["tokens"].tolist() for w in want], trial
        np.testing.assert_allclose([(s.start, s.end) for s in got],
                                   [(float(w["start"]), float(w["end"])) for w in want])
        assert our_moved == int(moved)
    # transformers' float32 arithmetic: a 30-frame window ends at 14 steps (0.28 s)
    assert split_segments([1], BEGIN, 0.0, 30)[0][0].end == pytest.approx(0.28)


# -- the command line and broken inputs -----------------------------------------------------


def _write_wav(path: Path, seconds: float, seed: int) -> Path:
    rate = 16_000
    t = np.arange(round(rate * seconds)) / rate
    noise = np.random.default_rng(seed).standard_normal(t.size)
    samples = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * noise
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(np.round(samples * 32767).astype("<i2").tobytes())
    return path


def test_cli_import_and_transcribe_equal_transformers(
        folder: Path, hf: Any, ours: Any, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    wav = _write_wav(tmp_path / "clip.wav", 4.0, seed=0)
    checkpoint = tmp_path / "whisper.safetensors"
    assert main(["import", str(folder), "--out", str(checkpoint)]) == 0
    capsys.readouterr()
    assert main(["transcribe", str(checkpoint), str(wav), "--json"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    assert main(["transcribe", str(folder), str(wav)]) == 0  # the HF folder, in memory
    assert capsys.readouterr().out.strip() == result["text"].strip()
    # transformers on the same features, its default budget (max_length 24) and detection
    features = ours.preprocess("audio", [wav])
    with torch.no_grad():
        ids = hf.generate(features, task="transcribe")[0].tolist()
    from tokenizers import Tokenizer

    text = Tokenizer.from_file(str(folder / "tokenizer.json")).decode(
        [i for i in ids if i < EOS], skip_special_tokens=True)
    assert result["text"] == text and len(ids) >= 8
    assert result["audio"] == str(wav) and result["language"] in ("en", "de", "fr")
    assert len(result["segments"]) >= 1 and set(result["segments"][0]) == {"start", "end",
                                                                             "text"}


def _broken_copy(folder: Path, tmp_path: Path, name: str) -> Path:
    copy = tmp_path / name
    shutil.copytree(folder, copy)
    return copy


def test_broken_folders_give_clear_errors(folder: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    missing = _broken_copy(folder, tmp_path, "missing")
    (missing / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"has no model\.safetensors"):
        import_model(missing)
    (missing / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(CheckpointError, match=r"only pytorch_model\.bin \(a pickle\)"):
        import_model(missing)
    disguised = _broken_copy(folder, tmp_path, "disguised")
    (disguised / "model.safetensors").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(CheckpointError, match="looks like a pickle"):
        import_model(disguised)
    deeper = _broken_copy(folder, tmp_path, "deeper")
    config = json.loads((deeper / "config.json").read_text())
    (deeper / "config.json").write_text(json.dumps({**config, "decoder_layers": 3}))
    with pytest.raises(CheckpointError, match=r"missing \d+ tensor.*heads\.decoder\.layers\.2"):
        import_model(deeper)
    wider = _broken_copy(folder, tmp_path, "wider")
    (wider / "config.json").write_text(json.dumps({**config, "decoder_ffn_dim": 128}))
    with pytest.raises(CheckpointError, match=r"shape mismatch: heads\.decoder\.layers\.0\.fc1"):
        import_model(wider)
    (wider / "config.json").write_text(json.dumps({**config, "num_mel_bins": 0}))
    with pytest.raises(CheckpointError, match="num_mel_bins must be a positive integer"):
        import_model(wider)
    (wider / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"has no config\.json"):
        import_model(wider, "hf-whisper")
    assert main(["transcribe", str(wider), str(tmp_path / "x.wav")]) == 1
    assert "neither an mmcore checkpoint nor a folder a converter recognises" in \
        capsys.readouterr().err


def test_bad_requests_give_clear_errors(folder: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    wav = _write_wav(tmp_path / "clip.wav", 1.0, seed=1)
    assert main(["transcribe", str(folder), str(wav), "--language", "xx"]) == 1
    assert "unknown language 'xx'; this model knows: de, en, fr" in capsys.readouterr().err
    assert main(["transcribe", str(folder), str(tmp_path / "none.wav")]) == 1
    assert "no audio file at" in capsys.readouterr().err
    assert main(["transcribe", str(folder), str(wav), "--tokenizer",
                 str(tmp_path / "gone.json")]) == 1
    assert "no tokenizer.json at" in capsys.readouterr().err
    with pytest.raises(ValueError, match="beam_size must be at least 1"):
        DecodeOptions(beam_size=0)

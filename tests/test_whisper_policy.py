"""openai-whisper's decoding policy (fallback, no-speech, prompts), segment times of short
clips, and batched transcription, on a tiny random Whisper (mmcore_whisper.testing)."""

from __future__ import annotations

import wave
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mmcore.cli import main
from mmcore.convert import import_model
from mmcore_whisper.decoding import Search, decode_windows
from mmcore_whisper.policy import OPENAI_DEFAULTS, compression_ratio
from mmcore_whisper.runner import WhisperRunner
from mmcore_whisper.testing import audio_features, write_random_whisper
from mmcore_whisper.transcribe import (
    DecodeOptions,
    encode,
    load_tokenizer,
    transcribe,
    transcribe_batch,
    transcribe_features,
    whisper_head,
)

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

EOS, START, PREVIOUS, NO_SPEECH, NO_TIMESTAMPS = 256, 257, 264, 265, 266


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("whisper") / "tiny"
    write_random_whisper(path)
    return path


@pytest.fixture(scope="module")
def plain_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint that never predicts timestamp tokens without being asked to (the random
    model does; a trained one does not): generation_config suppresses them."""
    import json

    path = tmp_path_factory.mktemp("whisper") / "plain"
    write_random_whisper(path)
    config = json.loads((path / "generation_config.json").read_text())
    config["suppress_tokens"] += list(range(NO_TIMESTAMPS + 1, NO_TIMESTAMPS + 1502))
    (path / "generation_config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def ours(folder: Path) -> Any:
    return import_model(folder).eval()


@pytest.fixture(scope="module")
def tokenizer(ours: Any) -> Any:
    return load_tokenizer(str(whisper_head(ours).tokens.tokenizer))


def _write_wav(path: Path, seconds: float, seed: int) -> Path:
    rate = 16_000
    t = np.arange(round(rate * seconds)) / rate
    samples = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * np.random.default_rng(
        seed).standard_normal(t.size)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(np.round(samples * 32767).astype("<i2").tobytes())
    return path


def test_special_tokens_of_the_policy(ours: Any) -> None:
    tokens = whisper_head(ours).tokens
    assert (tokens.no_speech, tokens.previous) == (NO_SPEECH, PREVIOUS)
    assert OPENAI_DEFAULTS["temperatures"] == (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    options = DecodeOptions.openai_whisper()
    assert (options.compression_ratio_threshold, options.logprob_threshold,
            options.no_speech_threshold) == (2.4, -1.0, 0.6)
    assert options.condition_on_previous_text and options.best_of == 5
    assert not DecodeOptions().uses_policy and options.uses_policy


def test_compression_ratio_as_openai_whisper() -> None:
    text = "the cat sat on the mat " * 8
    data = text.encode("utf-8")
    assert compression_ratio(text) == len(data) / len(zlib.compress(data))
    assert compression_ratio(text) == pytest.approx(184 / 30)  # repetitive: > 2.4
    assert compression_ratio("Whisper transcribes speech.") < 1.0  # short text grows


def test_no_speech_probability_equals_transformers(folder: Path, ours: Any) -> None:
    """P(<|nospeech|>) from the raw logits right after <|startoftranscript|>."""
    hf = transformers.WhisperForConditionalGeneration.from_pretrained(folder).eval()
    clips = audio_features(2, seed=3)
    head = whisper_head(ours)
    with torch.no_grad():
        want = hf(clips, decoder_input_ids=torch.full((2, 1), START)).logits[:, 0]
        context = encode(ours, head, clips)
        prompt = [START, 258, 262, NO_TIMESTAMPS]
        got = decode_windows(head, context, [prompt, [PREVIOUS, 40, 41, *prompt]], [4, 4],
                             Search())
    probs = want.softmax(dim=-1)[:, NO_SPEECH]
    assert got[0].no_speech_prob == pytest.approx(float(probs[0]), rel=1e-4)
    assert got[0].no_speech_prob is not None and got[1].no_speech_prob is not None
    assert got[1].no_speech_prob != got[0].no_speech_prob  # the prompt is in its context


def test_fallback_retries_at_higher_temperatures(ours: Any) -> None:
    clip = audio_features(1, seed=1)[0]
    plain = transcribe_features(ours, clip, DecodeOptions(language="en", max_new_tokens=8))
    temperatures = (0.0, 0.5, 1.0)
    # an average log-probability never reaches 0: every attempt fails, the last is kept
    failing = DecodeOptions(language="en", max_new_tokens=8, temperatures=temperatures,
                            logprob_threshold=0.0, best_of=2)
    retried = transcribe_features(ours, clip, failing)
    assert retried.segments and {s.temperature for s in retried.segments} == {1.0}
    assert retried.segments[0].avg_logprob is not None
    assert retried.segments[0].avg_logprob < 0.0
    assert retried.tokens != plain.tokens
    # a threshold every decode passes: no retry, the greedy tokens
    passing = transcribe_features(ours, clip, failing.with_(logprob_threshold=-1e9))
    assert {s.temperature for s in passing.segments} == {0.0}
    assert passing.tokens == plain.tokens
    # sampling is seeded: the same options give the same tokens
    assert transcribe_features(ours, clip, failing).tokens == retried.tokens


def test_compression_ratio_threshold_drives_fallback(ours: Any, tokenizer: Any) -> None:
    clip = audio_features(1, seed=1)[0]
    options = DecodeOptions(language="en", max_new_tokens=8, temperatures=(0.0, 0.4),
                            compression_ratio_threshold=-1.0)  # every text is "repetitive"
    result = transcribe_features(ours, clip, options, tokenizer=tokenizer)
    segment = result.segments[0]
    assert segment.temperature == 0.4 and segment.compression_ratio is not None
    with pytest.raises(ValueError, match="needs a tokenizer"):
        transcribe_features(ours, clip, options)


def test_no_speech_threshold_skips_windows(ours: Any) -> None:
    clip = audio_features(1, seed=1)[0]
    # the random model's P(<|nospeech|>) is small but above 0, its log-probability low
    skipped = transcribe_features(ours, clip, DecodeOptions(
        language="en", max_new_tokens=8, no_speech_threshold=0.0, logprob_threshold=-1.0))
    assert skipped.segments == []
    kept = transcribe_features(ours, clip, DecodeOptions(
        language="en", max_new_tokens=8, no_speech_threshold=0.0, logprob_threshold=-1e9))
    assert kept.segments and kept.segments[0].no_speech_prob is not None
    # no-speech also stops the fallback: a silent window is not decoded again
    silent = transcribe_features(ours, clip, DecodeOptions(
        language="en", max_new_tokens=8, temperatures=(0.0, 1.0), logprob_threshold=0.0,
        no_speech_threshold=0.0))
    assert silent.segments == []


def _prompts(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """Record the unpadded decoder prompts of every prefill."""
    seen: list[list[int]] = []
    original = WhisperRunner.prefill

    def spy(self: WhisperRunner, input_ids: torch.Tensor,
            attention_mask: torch.Tensor) -> Any:
        seen.extend(row[mask].tolist() for row, mask in zip(input_ids, attention_mask,
                                                            strict=True))
        return original(self, input_ids, attention_mask)

    monkeypatch.setattr(WhisperRunner, "prefill", spy)
    return seen


def test_initial_prompt_and_previous_text_open_the_decoder_input(
        ours: Any, tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    prompt_ids = tokenizer.encode(" hello there", add_special_tokens=False).ids
    features = audio_features(1, frames=4600, seed=7)[0]  # two windows or more
    seen = _prompts(monkeypatch)
    options = DecodeOptions(language="en", timestamps=True, max_new_tokens=10,
                            initial_prompt="  hello there ", condition_on_previous_text=True)
    result = transcribe_features(ours, features, options, tokenizer=tokenizer)
    task = [START, 258, 262]
    assert seen[0] == [PREVIOUS, *prompt_ids, *task]
    first = [t for s in result.segments if s.start < 30.0 and s.start != s.end
             for t in s.tokens]
    assert len(seen) >= 2 and seen[1] == [PREVIOUS, *prompt_ids, *first, *task]
    # without conditioning only the first window sees the initial prompt
    seen.clear()
    transcribe_features(ours, features, options.with_(condition_on_previous_text=False),
                        tokenizer=tokenizer)
    assert seen[0][0] == PREVIOUS and all(p == task for p in seen[1:])


def test_a_short_clip_ends_at_its_audio(plain_text: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    wav = _write_wav(tmp_path / "three.wav", 3.0, seed=0)
    model = import_model(plain_text).eval()
    [result] = transcribe(model, [wav], DecodeOptions(language="en", max_new_tokens=6))
    assert [(s.start, s.end) for s in result.segments] == [(0.0, pytest.approx(3.0))]
    assert main(["transcribe", str(plain_text), str(wav), "--json"]) == 0
    assert '"end": 3.0' in capsys.readouterr().out


def test_batched_transcription_equals_one_by_one(ours: Any, tokenizer: Any) -> None:
    lengths = [3000, 4600, 800, 3000, 6100]
    items = [(audio_features(1, frames=n, seed=20 + i)[0], n) for i, n in enumerate(lengths)]
    items[2] = (torch.nn.functional.pad(items[2][0], (0, 2200)), 800)  # a short clip, padded
    for options in (DecodeOptions(language="en", timestamps=True, max_new_tokens=10),
                    DecodeOptions(max_new_tokens=8, beam_size=2),  # detection, beams
                    DecodeOptions(language="de", timestamps=True, max_new_tokens=10,
                                  condition_on_previous_text=True)):  # left-padded prompts
        single = transcribe_batch(ours, items, options, tokenizer=tokenizer)
        batched = transcribe_batch(ours, items, options, tokenizer=tokenizer, batch_size=3)
        for one, many in zip(single, batched, strict=True):
            assert [s.tokens for s in one.segments] == [s.tokens for s in many.segments]
            assert [(s.start, s.end) for s in one.segments] == \
                [(s.start, s.end) for s in many.segments]
            assert one.language == many.language
        assert len({tuple(r.tokens) for r in single}) == len(items)


def test_transcribe_help_names_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["transcribe", "--help"]) == 0
    text = capsys.readouterr().out
    for option in ("--temperature", "--compression-ratio-threshold", "--logprob-threshold",
                   "--no-speech-threshold", "--condition-on-previous-text",
                   "--no-condition-on-previous-text", "--initial-prompt", "--best-of",
                   "--beam-size", "--batch-size", "--policy"):
        assert option in text, option


def test_cli_policy_and_batch(plain_text: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    import json

    wavs = [str(_write_wav(tmp_path / f"{i}.wav", 2.0 + i, seed=i)) for i in range(3)]
    args = ["transcribe", str(plain_text), *wavs, "--language", "en", "--json"]
    assert main([*args, "--batch-size", "2"]) == 0
    batched = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out) == batched
    assert [r["segments"][-1]["end"] for r in batched] == [2.0, 3.0, 4.0]
    assert main([*args, "--policy", "openai-whisper", "--temperature", "0,1",
                 "--no-speech-threshold", "none", "--initial-prompt", "hi"]) == 0
    [first, *_] = json.loads(capsys.readouterr().out)
    assert first["segments"][0]["temperature"] == 1.0  # -1.0 is out of a random model's reach
    assert main([*args, "--temperature", "x"]) == 2
    assert "expected numbers separated by commas" in capsys.readouterr().err


def test_average_logprob_is_openai_whispers(ours: Any) -> None:
    """sum of log-softmax(rule-processed logits) at each chosen token, EOS included, over
    (text tokens + 1): recomputed here from a full (uncached) decode."""
    from mmcore_whisper.decoding import LogitRules

    head = whisper_head(ours)
    clip = audio_features(1, seed=4)
    prompt = [START, 258, 262, NO_TIMESTAMPS]
    with torch.no_grad():
        context = encode(ours, head, clip)
        [result] = decode_windows(head, context, [prompt], [12], Search())
        ids = torch.tensor([prompt + result.tokens + [EOS]])
        logits = head.decode(ids, context)[0].float()  # (T, V)
    rules = LogitRules(head.tokens, head.cfg.vocab_size, len(prompt), timestamps=False)
    generated = ids[0, len(prompt) :].tolist()[:12]
    total = sum(float(torch.log_softmax(rules([generated[:i]], logits[len(prompt) - 1 + i][
        None]), dim=-1)[0, t]) for i, t in enumerate(generated))
    assert result.sum_logprob == pytest.approx(total, abs=1e-3)
    assert result.avg_logprob == pytest.approx(total / (len(result.tokens) + 1), abs=1e-3)

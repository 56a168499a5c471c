"""Word-level timestamps (cross-attention alignment + DTW, as openai-whisper) and the
transcript formats (txt, srt, vtt, json) of ``mmcore transcribe``, on tiny random
checkpoints (mmcore_whisper.testing)."""

from __future__ import annotations

import json
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mmcore.cli import main
from mmcore.convert import import_model
from mmcore_whisper.alignment import (
    AlignmentInput,
    add_words,
    alignment_heads,
    dtw,
    median_filter,
    split_to_word_tokens,
)
from mmcore_whisper.formats import render, timestamp
from mmcore_whisper.options import Segment
from mmcore_whisper.testing import audio_features, write_random_whisper
from mmcore_whisper.transcribe import (
    DecodeOptions,
    encode,
    load_tokenizer,
    transcribe_features,
    whisper_head,
)

pytest.importorskip("transformers")

EOS, START, EN, TRANSCRIBE, NO_TIMESTAMPS = 256, 257, 258, 262, 266


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("whisper") / "tiny"
    write_random_whisper(path)
    return path


@pytest.fixture(scope="module")
def ours(folder: Path) -> Any:
    return import_model(folder).eval()


@pytest.fixture(scope="module")
def tokenizer(ours: Any) -> Any:
    return load_tokenizer(str(whisper_head(ours).tokens.tokenizer))


def reference_dtw(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """openai-whisper's dtw_cpu + backtrace, the plain O(NM) double loop."""
    n, m = x.shape
    cost = np.full((n + 1, m + 1), np.inf)
    trace = -np.ones((n + 1, m + 1))
    cost[0, 0] = 0
    for j in range(1, m + 1):
        for i in range(1, n + 1):
            c0, c1, c2 = cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]
            if c0 < c1 and c0 < c2:
                c, t = c0, 0
            elif c1 < c0 and c1 < c2:
                c, t = c1, 1
            else:
                c, t = c2, 2
            cost[i, j] = x[i - 1, j - 1] + c
            trace[i, j] = t
    i, j = n, m
    trace[0, :], trace[:, 0] = 2, 1
    path = []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        if trace[i, j] == 0:
            i, j = i - 1, j - 1
        elif trace[i, j] == 1:
            i -= 1
        else:
            j -= 1
    rows, cols = np.array(path[::-1]).T
    return rows, cols


def test_dtw_on_a_hand_made_cost_matrix() -> None:
    # a cheap diagonal band: token 0 over frames 0-1, token 1 over 2-3, token 2 over 4
    cost = np.array([[0, 0, 9, 9, 9],
                     [9, 9, 0, 0, 9],
                     [9, 9, 9, 9, 0]], dtype=float)
    rows, cols = dtw(cost)
    assert rows.tolist() == [0, 0, 1, 1, 2]
    assert cols.tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("seed", range(6))
def test_dtw_equals_the_plain_double_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(1, 9)), int(rng.integers(1, 30))
    # small integers make many ties, which the tie-breaking must resolve identically
    x = rng.integers(0, 3, (n, m)).astype(float) if seed % 2 else rng.standard_normal((n, m))
    ours_, theirs = dtw(x), reference_dtw(x)
    assert ours_[0].tolist() == theirs[0].tolist()
    assert ours_[1].tolist() == theirs[1].tolist()


def test_median_filter_reflects_at_the_edges() -> None:
    x = torch.tensor([[5.0, 1.0, 4.0, 2.0, 3.0, 9.0]])
    out = median_filter(x, 3)  # reflect padding: [1, 5, 1, 4, 2, 3, 9, 3]
    assert out.tolist() == [[1.0, 4.0, 2.0, 3.0, 3.0, 3.0]]


def test_split_to_word_tokens_on_spaces_and_punctuation(tokenizer: Any) -> None:
    ids = tokenizer.encode(" Hello world, it's me.", add_special_tokens=False).ids

    def decode(tokens: list[int]) -> str:
        return str(tokenizer.decode(tokens, skip_special_tokens=False))

    words, groups = split_to_word_tokens([*ids, EOS], decode, EOS)
    assert words == [" Hello", " world", ",", " it", "'s", " me", ".", "<|endoftext|>"]
    assert [t for g in groups for t in g] == [*ids, EOS]


def test_alignment_heads_default_and_from_generation_config(folder: Path, ours: Any,
                                                            tmp_path: Path) -> None:
    head = whisper_head(ours)  # 2 layers x 4 heads, no alignment_heads in the folder
    assert alignment_heads(head) == [(1, 0), (1, 1), (1, 2), (1, 3)]
    copy = tmp_path / "aligned"
    write_random_whisper(copy)
    config = json.loads((copy / "generation_config.json").read_text())
    config["alignment_heads"] = [[0, 2], [1, 1]]
    (copy / "generation_config.json").write_text(json.dumps(config))
    assert alignment_heads(whisper_head(import_model(copy))) == [(0, 2), (1, 1)]


def _segment_words(ours: Any, tokenizer: Any, text: str, start: float,
                   end: float) -> Segment:
    head = whisper_head(ours)
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    context = encode(ours, head, audio_features(1, seed=3))
    segment = Segment(start, end, ids, text=text)
    window = AlignmentInput([START, EN, TRANSCRIBE, NO_TIMESTAMPS], [], 1000, 0.0)
    add_words(head, context, window, [segment],
              lambda t: str(tokenizer.decode(list(t), skip_special_tokens=False)))
    return segment


def test_words_are_monotonic_inside_the_segment_and_make_its_text(ours: Any,
                                                                  tokenizer: Any) -> None:
    text = " The quick brown fox, \"jumps\" over the lazy dog."
    segment = _segment_words(ours, tokenizer, text, 0.0, 10.0)
    words = segment.words
    assert words is not None and len(words) == 9
    assert "".join(w.word for w in words) == text
    assert [w.word for w in words][4:6] == [' "jumps"', " over"]  # punctuation merged
    times = [t for w in words for t in (w.start, w.end)]
    assert times == sorted(times) and times[0] >= 0.0 and times[-1] <= 10.0
    assert all(0.0 < w.probability <= 1.0 for w in words)
    assert all(round(w.start / 0.02, 6).is_integer() for w in words)  # 20 ms frames
    assert sum(len(w.tokens) for w in words) == len(segment.tokens)


def test_words_are_clamped_into_a_short_segment(ours: Any, tokenizer: Any) -> None:
    segment = _segment_words(ours, tokenizer, " one two three", 2.0, 2.5)
    assert segment.words and all(2.0 <= w.start <= w.end <= 2.5 for w in segment.words)


def test_transcribe_gives_words_within_each_segment(ours: Any, tokenizer: Any) -> None:
    features = audio_features(1, seed=1)[0]
    options = DecodeOptions(word_timestamps=True, timestamps=True, language="en")
    result = transcribe_features(ours, features, options, tokenizer=tokenizer)
    assert result.segments
    last = 0.0
    for segment in result.segments:
        assert segment.words is not None
        for word in segment.words:
            assert segment.start <= word.start <= word.end <= segment.end
            assert word.start >= last
            last = word.end
    # random byte tokens: an incomplete UTF-8 character joins the next segment's tokens
    words = [w for s in result.segments for w in s.words or []]
    assert sum(len(w.tokens) for w in words) <= sum(t < EOS for t in result.tokens)
    plain = transcribe_features(ours, features, options.with_(word_timestamps=False),
                                tokenizer=tokenizer)
    assert [s.tokens for s in plain.segments] == [s.tokens for s in result.segments]


def test_formats_by_hand() -> None:
    result = {"audio": "a.wav", "segments": [
        {"start": 0.0, "end": 2.5, "text": " Hello there."},
        {"start": 2.5, "end": 3661.25, "text": " Bye.",
         "words": [{"word": " Bye.", "start": 3.0, "end": 3.5, "probability": 0.9}]}]}
    assert timestamp(3661.25, comma=True, always_hours=True) == "01:01:01,250"
    assert render(result, "txt") == "Hello there.\nBye.\n"
    assert render(result, "srt") == ("1\n00:00:00,000 --> 00:00:02,500\nHello there.\n\n"
                                     "2\n00:00:03,000 --> 00:00:03,500\nBye.\n\n")
    assert render(result, "vtt") == ("WEBVTT\n\n00:00.000 --> 00:02.500\nHello there.\n\n"
                                     "00:03.000 --> 00:03.500\nBye.\n\n")
    assert json.loads(render(result, "json")) == result


def _wav(path: Path, seconds: float = 2.0) -> Path:
    rate = 16_000
    t = np.arange(round(rate * seconds)) / rate
    samples = 0.3 * np.sin(2 * np.pi * 440 * t)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.round(samples * 32767).astype("<i2").tobytes())
    return path


def test_cli_formats_and_word_timestamps(folder: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    audio = str(_wav(tmp_path / "talk.wav"))
    base = ["transcribe", str(folder), audio, "--language", "en"]
    assert main([*base, "--format", "srt"]) == 2
    assert "--format srt needs times: add --timestamps (segment times) or " \
           "--word-timestamps" in capsys.readouterr().err
    assert main([*base, "--word-timestamps", "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert all("words" in s for s in result["segments"])
    out = tmp_path / "subs"
    assert main([*base, "--word-timestamps", "--format", "vtt", "--output-dir", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "talk.vtt")
    assert (out / "talk.vtt").read_text().startswith("WEBVTT\n\n")
    assert main([*base, "--timestamps", "--format", "srt"]) == 0
    srt = capsys.readouterr().out
    assert srt == render({"segments": result_segments(folder, audio)}, "srt")


def result_segments(folder: Path, audio: str) -> list[dict[str, Any]]:
    from mmcore_whisper.transcribe import transcribe

    model = import_model(folder).eval()
    (transcript,) = transcribe(model, [audio], DecodeOptions(language="en", timestamps=True))
    return [s.as_dict() for s in transcript.segments]

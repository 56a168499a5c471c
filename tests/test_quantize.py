"""``mmcore transcribe --quantize int8``: int8 dynamic quantisation of a Whisper model's
Linear layers and output projection (mmcore_whisper.quantize), on a tiny random checkpoint.

Tolerance: int8 weights (per-tensor scale) and activations quantised per call give logits
within 5 % of fp32's (relative L2 norm over the vocabulary) at every step checked here.
"""

from __future__ import annotations

import copy
import importlib.util
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from mmcore.cli import main
from mmcore.convert import import_model
from mmcore_whisper.quantize import Int8OutputProjection, quantize_model
from mmcore_whisper.testing import audio_features, write_random_whisper
from mmcore_whisper.transcribe import DecodeOptions, encode, transcribe_features, whisper_head

pytest.importorskip("transformers")
TOLERANCE = 0.05  # relative L2 error of the logits, int8 against fp32


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("whisper") / "tiny"
    write_random_whisper(path)
    return path


@pytest.fixture(scope="module")
def models(folder: Path) -> tuple[Any, Any]:
    fp32 = import_model(folder).eval()
    return fp32, quantize_model(copy.deepcopy(fp32), "int8")


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _step_logits(model: Any, features: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log-mel (B, n_mels, F) and a prompt (B, T) -> KV-cached logits (B, T, V)."""
    head = whisper_head(model)
    with torch.no_grad():
        cache = head.start_cache(encode(model, head, features), max_length=ids.shape[1])
        return head.step(ids, cache)


def test_linears_and_output_projection_are_quantised(models: tuple[Any, Any]) -> None:
    fp32, int8 = models
    assert not any(type(m) is nn.Linear for m in int8.modules())
    assert any(type(m) is nn.Linear for m in fp32.modules())  # the original is untouched
    assert isinstance(whisper_head(int8).output_override, Int8OutputProjection)
    assert whisper_head(fp32).output_override is None


def test_log_mel_to_logits_stay_close_to_fp32(models: tuple[Any, Any]) -> None:
    fp32, int8 = models
    features = audio_features(2, seed=3)
    head = whisper_head(fp32)
    prompt = head.tokens.prompt(language_id=head.tokens.language_id("en"), task="transcribe",
                                timestamps=False)
    ids = torch.tensor([prompt, prompt])
    expected, got = _step_logits(fp32, features, ids), _step_logits(int8, features, ids)
    assert got.shape == expected.shape
    assert _relative(got, expected) < TOLERANCE
    with torch.no_grad():  # the head's forward (no cache: fp32 output projection)
        first = int8({"audio": features}).heads["decoder"]
        assert _relative(first, fp32({"audio": features}).heads["decoder"]) < TOLERANCE


def test_int8_output_projection_matches_the_matrix_product() -> None:
    weight = torch.randn(300, 32)
    hidden = torch.randn(2, 3, 32)
    got = hidden @ Int8OutputProjection(weight)
    assert got.shape == (2, 3, 300)
    assert _relative(got, hidden @ weight.T) < TOLERANCE


def test_quantised_model_transcribes(models: tuple[Any, Any]) -> None:
    _, int8 = models
    result = transcribe_features(int8, audio_features(1, seed=5)[0],
                                 DecodeOptions(language="en", max_new_tokens=8))
    assert result.tokens and all(isinstance(t, int) for t in result.tokens)


def test_modes() -> None:
    model = nn.Sequential(nn.Linear(4, 4))
    assert quantize_model(model, "none") is model and type(model[0]) is nn.Linear
    with pytest.raises(ValueError, match="unknown quantisation 'int4'; choose from none, int8"):
        quantize_model(model, "int4")


def _write_wav(path: Path, seconds: float) -> Path:
    rate = 16_000
    t = np.arange(round(rate * seconds)) / rate
    samples = 0.3 * np.sin(2 * np.pi * 440 * t)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(np.round(samples * 32767).astype("<i2").tobytes())
    return path


def test_cli_transcribes_with_quantize_int8(folder: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    wav = _write_wav(tmp_path / "clip.wav", 2.0)
    assert main(["transcribe", str(folder), str(wav), "--quantize", "int8",
                 "--language", "en", "--json"]) == 0
    assert '"text"' in capsys.readouterr().out
    assert main(["transcribe", str(folder), str(wav), "--quantize", "int4"]) == 2
    assert "invalid choice: 'int4'" in capsys.readouterr().err


def test_bench_word_error_rate() -> None:
    path = Path(__file__).resolve().parents[1] / "bench" / "whisper_cpu.py"
    spec = importlib.util.spec_from_file_location("whisper_cpu_bench", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.word_errors(["a", "b", "c"], ["a", "x", "c", "d"]) == 2  # 1 sub + 1 insertion
    assert bench.word_errors([], [1, 2]) == 2 and bench.word_errors([1, 2], []) == 2
    assert bench.corpus_wer([[1, 2, 3, 4], [5]], [[1, 2, 3, 4], [6]]) == pytest.approx(0.2)

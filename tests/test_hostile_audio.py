"""Hostile audio: non-finite or absurd samples, lying headers, absurd sample rates, and
audio trimmed before it is resampled (issue: no silent nonsense, no unbounded memory)."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from mmcore_audio import decode_wav, read_wav
from mmcore_audio.preprocess import AudioPreprocessConfig, AudioPreprocessor
from mmcore_audio.resample import input_span, resample


def _float_wav(samples: np.ndarray, rate: int = 16000) -> bytes:
    data = samples.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + \
        struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _pcm_wav(path: Path, rate: int, frames: int = 1600) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(np.zeros(frames, dtype="<i2").tobytes())
    return path


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_samples_are_refused(bad: float) -> None:
    samples = np.zeros(1600, dtype=np.float32)
    samples[7] = bad
    with pytest.raises(ValueError, match=r"clip\.wav.*NaN or infinite"):
        decode_wav(_float_wav(samples), "clip.wav")


def test_absurd_float_magnitudes_are_refused_with_the_limit() -> None:
    samples = np.zeros(1600, dtype=np.float32)
    samples[3] = 1e30
    with pytest.raises(ValueError, match=r"magnitude 1e\+30 is beyond 1000"):
        decode_wav(_float_wav(samples), "loud.wav")
    ok = np.full(1600, 1.5, dtype=np.float32)  # clipped but plausible audio still reads
    assert decode_wav(_float_wav(ok), "ok.wav")[0].max() == pytest.approx(1.5)


def test_a_header_promising_more_data_than_the_file_holds_is_refused(tmp_path: Path) -> None:
    blob = _float_wav(np.zeros(1600, dtype=np.float32))
    with pytest.raises(ValueError, match=r"declares 6,400 bytes.*holds 3,200"):
        decode_wav(blob[: len(blob) - 3200], "cut.wav")
    pcm = _pcm_wav(tmp_path / "pcm.wav", 16000).read_bytes()
    with pytest.raises(ValueError, match=r"pcm\.wav.*declares 3,200 bytes.*holds 1,200"):
        decode_wav(pcm[: len(pcm) - 2000], "pcm.wav")


@pytest.mark.parametrize("rate", [1, 999, 200_000_000])
def test_absurd_sample_rates_are_refused(tmp_path: Path, rate: int) -> None:
    path = _pcm_wav(tmp_path / "odd.wav", rate, frames=4)
    with pytest.raises(ValueError, match=r"odd\.wav: sample rate .* Hz is outside 1,000"):
        read_wav(path)


def test_a_bool_is_not_a_sample_rate() -> None:
    pre = AudioPreprocessor(AudioPreprocessConfig())
    with pytest.raises(TypeError, match="sample_rate: positive int"):
        pre([(np.zeros(1600, dtype=np.float32), True)])
    with pytest.raises(ValueError, match=r"magnitude"):
        pre([(np.full(1600, 1e9, dtype=np.float32), 16000)])


@pytest.mark.parametrize(("rate", "target"), [(44100, 3000), (8000, 4800), (48000, 160)])
def test_trimming_before_resampling_keeps_the_kept_samples_exact(rate: int,
                                                                  target: int) -> None:
    waveform = torch.randn(rate // 2, generator=torch.Generator().manual_seed(rate))
    full = resample(waveform, rate, 16000)[:target]
    trimmed = resample(waveform[: input_span(target, rate, 16000)], rate, 16000)[:target]
    assert trimmed.shape == full.shape
    # equal up to float32 summation order inside conv1d (unit-variance noise: ~1e-6)
    torch.testing.assert_close(trimmed, full, atol=1e-5, rtol=0)
    assert input_span(target, rate, 16000) < waveform.shape[0]


def test_a_long_low_rate_clip_is_trimmed_before_it_is_resampled() -> None:
    pre = AudioPreprocessor(AudioPreprocessConfig(pad_to_seconds=1.0))
    hour = np.zeros(1000 * 3600, dtype=np.float32)  # an hour at 1 kHz
    assert tuple(pre.waveform((hour, 1000)).shape) == (16000,)

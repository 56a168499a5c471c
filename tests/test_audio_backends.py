"""Audio files beyond WAV: FLAC/OGG/MP3 through the optional soundfile backend, WAV always
through the built-in decoder, the WAV limits on every backend, and a clear message naming
the package when it is missing."""

from __future__ import annotations

import sys
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mmcore_audio import read_audio, read_wav
from mmcore_audio.backends import sniff

RATE = 16_000


def _tone(seconds: float = 0.25) -> np.ndarray:
    t = np.arange(round(RATE * seconds)) / RATE
    return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def _write_wav(path: Path, samples: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(np.round(samples * 32767).astype("<i2").tobytes())
    return path


def test_sniffing_reads_the_first_bytes_before_the_suffix() -> None:
    assert sniff(b"RIFF\x00\x00\x00\x00WAVE", ".mp3") == "WAV"
    assert sniff(b"fLaC\x00\x00\x00\x22", ".wav") == "FLAC"
    assert sniff(b"OggS\x00\x02", "") == "OGG"
    assert sniff(b"ID3\x04", "") == "MP3"
    assert sniff(b"\xff\xfb\x90\x00", "") == "MP3"
    assert sniff(b"junk", ".flac") == "FLAC"
    assert sniff(b"junk", ".xyz") is None


def test_wav_always_uses_the_built_in_decoder(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "soundfile", None)  # not installed
    path = _write_wav(tmp_path / "a.wav", _tone())
    samples, rate = read_audio(path)
    expected, _ = read_wav(path)
    assert rate == RATE and np.array_equal(samples, expected)


def test_missing_soundfile_names_the_package(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "soundfile", None)
    song = tmp_path / "song.flac"
    song.write_bytes(b"fLaC" + bytes(40))
    with pytest.raises(ValueError) as err:
        read_audio(song)
    assert str(err.value) == ("cannot read song.flac: FLAC needs the 'soundfile' package "
                              "(pip install soundfile); without it only WAV is read")
    other = tmp_path / "clip.xyz"
    other.write_bytes(bytes(40))
    with pytest.raises(ValueError, match=r"clip.xyz: audio of this kind \(\.xyz\) needs the "
                                         "'soundfile' package"):
        read_audio(other)


class FakeSoundfile:
    """Stands in for soundfile: returns the samples and rate it was given."""

    def __init__(self, data: np.ndarray, rate: Any) -> None:
        self.data, self.rate, self.calls = data, rate, []

    def read(self, path: str, dtype: str, always_2d: bool) -> tuple[np.ndarray, Any]:
        self.calls.append((path, dtype, always_2d))
        return self.data, self.rate


def test_the_wav_limits_apply_to_soundfile(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    song = tmp_path / "song.ogg"
    song.write_bytes(b"OggS" + bytes(40))
    stereo = np.stack([_tone(), np.zeros_like(_tone())], axis=1)  # (L, 2)
    fake = FakeSoundfile(stereo, 22_050)
    monkeypatch.setitem(sys.modules, "soundfile", fake)
    samples, rate = read_audio(song)
    assert rate == 22_050 and fake.calls == [(str(song), "float32", True)]
    np.testing.assert_allclose(samples, _tone() / 2, atol=1e-7)  # channels averaged
    bad = [(np.full((10, 1), np.nan, np.float32), 16_000, "NaN or infinite"),
           (np.full((10, 1), 5e3, np.float32), 16_000, "beyond 1000"),
           (np.zeros((0, 1), np.float32), 16_000, "zero-length"),
           (np.zeros((10, 1), np.float32), 10, "sample rate 10 Hz is outside")]
    for data, rate_, message in bad:
        monkeypatch.setitem(sys.modules, "soundfile", FakeSoundfile(data, rate_))
        with pytest.raises(ValueError, match=message):
            read_audio(song)


@pytest.mark.parametrize(("suffix", "fmt", "atol"), [(".flac", "FLAC", 1e-4),
                                                      (".ogg", "OGG", 0.05),
                                                      (".mp3", "MP3", 0.1)])
def test_real_soundfile_formats(tmp_path: Path, suffix: str, fmt: str, atol: float) -> None:
    soundfile = pytest.importorskip("soundfile")
    if fmt not in soundfile.available_formats():
        pytest.skip(f"this libsndfile cannot write {fmt}")
    path = tmp_path / f"tone{suffix}"
    soundfile.write(str(path), _tone(), RATE, format=fmt)
    samples, rate = read_audio(path)
    assert rate == RATE
    assert abs(samples.shape[0] - _tone().shape[0]) <= 2048  # codec padding
    n = min(samples.shape[0], _tone().shape[0])
    # lossless FLAC is exact to 16 bits; lossy codecs keep the tone's energy
    if fmt == "FLAC":
        np.testing.assert_allclose(samples[:n], _tone()[:n], atol=atol)
    else:
        assert abs(float(np.sqrt(np.mean(samples**2))) - 0.5 / np.sqrt(2)) < atol


def test_a_broken_file_names_it(tmp_path: Path) -> None:
    pytest.importorskip("soundfile")
    path = tmp_path / "broken.flac"
    path.write_bytes(b"fLaC" + bytes(100))
    with pytest.raises(ValueError, match=r"cannot read audio .*broken\.flac: soundfile could "
                                         "not decode it"):
        read_audio(path)


def test_the_whisper_preprocessor_reads_flac(tmp_path: Path) -> None:
    soundfile = pytest.importorskip("soundfile")
    from mmcore_audio.preprocess import AudioPreprocessConfig, AudioPreprocessor

    flac = tmp_path / "tone.flac"
    soundfile.write(str(flac), _tone(), RATE, format="FLAC")
    wav = _write_wav(tmp_path / "tone.wav", _tone())
    pre = AudioPreprocessor(AudioPreprocessConfig(pad_to_seconds=1.0))
    features = pre([flac, wav])
    assert isinstance(features, torch_tensor())
    # both hold the tone at 16 bits (scaled by 32768 vs 32767): log-mel within 5e-3
    assert float((features[0] - features[1]).abs().max()) < 5e-3


def torch_tensor() -> type:
    import torch

    return torch.Tensor

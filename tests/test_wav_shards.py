"""WAV members of webdataset shards go through mmcore_audio's decoder: float and
WAVE_FORMAT_EXTENSIBLE WAVs read back exactly, as files on disk do."""

from __future__ import annotations

import io
import struct
import tarfile
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mmcore_webdataset.dataset import WebDataset, WebDatasetConfig


def float_wav(samples: np.ndarray, rate: int, bits: int = 32, extensible: bool = False) -> bytes:
    """(L, C) floats -> the bytes of an IEEE-float WAV (tag 3, or 0xFFFE + float GUID)."""
    channels, width = samples.shape[1], bits // 8
    data = samples.astype("<f4" if bits == 32 else "<f8").tobytes()
    fmt = struct.pack("<HHIIHH", 0xFFFE if extensible else 3, channels, rate,
                      rate * width * channels, width * channels, bits)
    if extensible:
        guid = struct.pack("<H", 3) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        fmt += struct.pack("<HHI", 22, bits, 0) + guid
    body = (b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
            + b"data" + struct.pack("<I", len(data)) + data)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def pcm_wav(ints: np.ndarray, rate: int) -> bytes:
    """(L,) int16 values -> the bytes of a 16-bit mono PCM WAV."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(ints.astype("<i2").tobytes())
    return buffer.getvalue()


def write_shard(path: Path, samples: dict[str, dict[str, bytes]]) -> Path:
    """key -> {extension: bytes} as one tar shard, members named ``key.extension``."""
    with tarfile.open(path, "w") as tar:
        for key, members in samples.items():
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def read_all(shard: Path) -> dict[str, dict[str, Any]]:
    cfg = WebDatasetConfig(shards=str(shard), modalities={"audio": ["wav"], "text": ["txt"]},
                           shuffle_shards=False, with_key=True)
    return {str(item["__key__"]): item for item in WebDataset(cfg)}


@pytest.mark.parametrize(("bits", "extensible"), [(32, False), (64, False), (32, True)])
def test_float_wav_in_a_shard_reads_back(tmp_path: Path, bits: int, extensible: bool) -> None:
    stereo = np.array([[0.125, -0.375], [0.7, 0.1], [-1.0, 0.5], [0.3, 0.3]], dtype=np.float32)
    shard = write_shard(tmp_path / "data-000000.tar", {
        "a": {"wav": float_wav(stereo, 22_050, bits, extensible), "txt": b"float"},
        "b": {"wav": pcm_wav(np.array([0, 16384, -32768]), 8_000), "txt": b"pcm"}})
    items = read_all(shard)
    waveform, rate = items["a"]["audio"]
    assert rate == 22_050 and waveform.dtype == np.float32
    np.testing.assert_allclose(waveform, [-0.125, 0.4, -0.25, 0.3], atol=1e-7, rtol=0)
    waveform, rate = items["b"]["audio"]
    assert rate == 8_000
    np.testing.assert_allclose(waveform, [0.0, 0.5, -1.0], atol=1e-7, rtol=0)
    assert items["a"]["text"] == "float"

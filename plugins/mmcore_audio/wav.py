"""Read WAV files with the stdlib ``wave`` module and numpy: 8/16/24/32-bit PCM, and 32/64-bit
IEEE float (which ``wave`` refuses, so its RIFF chunks are parsed here). Channels are averaged
to mono; samples come back as float32 in [-1, 1]."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import numpy as np

WAVE_FORMAT_PCM = 0x0001
WAVE_FORMAT_IEEE_FLOAT = 0x0003
WAVE_FORMAT_EXTENSIBLE = 0xFFFE


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """A WAV file -> (mono waveform (L,) float32, sample rate).

    Raises FileNotFoundError for a missing file and ValueError naming the file for an
    unreadable, empty, truncated, non-WAV or sample-less one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no audio file at {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"cannot read audio {path}: the file is empty (0 bytes)")
    try:
        samples, rate = _read_pcm(path)
    except wave.Error as exc:
        if "unknown format" not in str(exc):
            raise ValueError(f"cannot read audio {path}: not a readable WAV file ({exc})") from None
        samples, rate = _read_riff(path)
    except EOFError:
        raise ValueError(f"cannot read audio {path}: the WAV header is truncated") from None
    except OSError as exc:  # permissions, a directory, I/O errors
        raise ValueError(f"cannot read audio {path}: {exc.strerror or exc}") from None
    if samples.shape[0] == 0:
        raise ValueError(f"cannot read audio {path}: the WAV file holds no samples "
                         "(zero-length audio)")
    if rate <= 0:
        raise ValueError(f"cannot read audio {path}: invalid sample rate {rate}")
    return samples.mean(axis=1, dtype=np.float64).astype(np.float32), rate


def _read_pcm(path: Path) -> tuple[np.ndarray, int]:
    """PCM through ``wave`` -> ((L, C) float32, rate)."""
    with wave.open(str(path), "rb") as wav:
        channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
        data = wav.readframes(wav.getnframes())
    return _decode_pcm(data, width, channels, path), rate


def _decode_pcm(data: bytes, width: int, channels: int, path: Path) -> np.ndarray:
    """Little-endian PCM bytes -> (L, C) float32 in [-1, 1]."""
    frame = width * channels
    data = data[: len(data) - len(data) % frame] if frame else data
    if width == 1:  # unsigned 8-bit
        ints = np.frombuffer(data, dtype=np.uint8).astype(np.float32) - 128.0
        scale = 128.0
    elif width == 2:
        ints = np.frombuffer(data, dtype="<i2").astype(np.float32)
        scale = 2.0**15
    elif width == 3:
        raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        value = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
        ints = np.where(value >= 1 << 23, value - (1 << 24), value).astype(np.float32)
        scale = 2.0**23
    elif width == 4:
        ints = np.frombuffer(data, dtype="<i4").astype(np.float64)
        scale = 2.0**31
    else:
        raise ValueError(f"cannot read audio {path}: unsupported PCM sample width "
                         f"{8 * width} bits")
    return (ints / scale).astype(np.float32).reshape(-1, channels)


def _chunks(blob: bytes, path: Path) -> dict[bytes, bytes]:
    """RIFF/WAVE chunk id -> payload (the first of each id)."""
    if len(blob) < 12 or blob[:4] != b"RIFF" or blob[8:12] != b"WAVE":
        raise ValueError(f"cannot read audio {path}: not a WAV file (no RIFF/WAVE header)")
    chunks: dict[bytes, bytes] = {}
    pos = 12
    while pos + 8 <= len(blob):
        cid, size = blob[pos : pos + 4], struct.unpack("<I", blob[pos + 4 : pos + 8])[0]
        chunks.setdefault(cid, blob[pos + 8 : pos + 8 + size])
        pos += 8 + size + (size & 1)  # chunks are word aligned
    return chunks


def _read_riff(path: Path) -> tuple[np.ndarray, int]:
    """Non-PCM WAV (IEEE float, or PCM/float inside WAVE_FORMAT_EXTENSIBLE) -> ((L, C), rate)."""
    chunks = _chunks(path.read_bytes(), path)
    fmt, data = chunks.get(b"fmt "), chunks.get(b"data")
    if fmt is None or len(fmt) < 16 or data is None:
        raise ValueError(f"cannot read audio {path}: the WAV file lacks a fmt or data chunk")
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == WAVE_FORMAT_EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack("<H", fmt[24:26])[0]  # first two bytes of the sub-format GUID
    if channels == 0:
        raise ValueError(f"cannot read audio {path}: the WAV header declares 0 channels")
    if tag == WAVE_FORMAT_PCM:
        return _decode_pcm(data, bits // 8, channels, path), rate
    if tag == WAVE_FORMAT_IEEE_FLOAT and bits in (32, 64):
        dtype = "<f4" if bits == 32 else "<f8"
        width = bits // 8 * channels
        values = np.frombuffer(data[: len(data) - len(data) % width], dtype=dtype)
        return values.astype(np.float32).reshape(-1, channels), rate
    raise ValueError(f"cannot read audio {path}: unsupported WAV encoding (format tag "
                     f"{tag:#06x}, {bits} bits); use PCM or 32/64-bit float")

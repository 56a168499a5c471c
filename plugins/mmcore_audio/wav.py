"""The one WAV decoder: 8/16/24/32-bit PCM and 32/64-bit IEEE float, plain or inside
WAVE_FORMAT_EXTENSIBLE (which the stdlib ``wave`` module refuses, so the RIFF chunks are
parsed here). Channels are averaged to mono; samples come back as float32 in [-1, 1].

:func:`read_wav` reads a path; :func:`decode_wav` decodes bytes (e.g. a ``.wav`` member of a
webdataset shard). Both raise ValueError naming the file for anything they cannot decode.
"""

from __future__ import annotations

import io
import struct
import wave
from pathlib import Path

import numpy as np

from mmcore.limits import Limit

#: Sample rates outside these bounds are refused (a 1 Hz header would ask the resampler for
#: 16,000 output samples per input sample); see docs/reliability.md.
MIN_SAMPLE_RATE = Limit("audio_min_rate", 1_000, "the lowest audio sample rate in Hz")
MAX_SAMPLE_RATE = Limit("audio_max_rate", 768_000, "the highest audio sample rate in Hz")
#: Float samples are nominally in [-1, 1]; beyond this magnitude the data is not audio.
MAX_ABS_SAMPLE = Limit("audio_amplitude", 1_000.0, "the largest absolute float sample")

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
    try:
        data = path.read_bytes()
    except OSError as exc:  # permissions, I/O errors
        raise ValueError(f"cannot read audio {path}: {exc.strerror or exc}") from None
    return decode_wav(data, str(path))


def decode_wav(data: bytes, name: str = "WAV bytes") -> tuple[np.ndarray, int]:
    """WAV file bytes -> (mono waveform (L,) float32, sample rate).

    ``name`` (a path, or a shard member's key) is what error messages call the data.
    Raises ValueError for empty, truncated, non-WAV, unsupported or sample-less data.
    """
    if not data:
        raise ValueError(f"cannot read audio {name}: the file is empty (0 bytes)")
    try:
        samples, rate = _read_pcm(data, name)
    except wave.Error as exc:
        if "unknown format" not in str(exc):
            raise ValueError(f"cannot read audio {name}: not a readable WAV file ({exc})") \
                from None
        samples, rate = _read_riff(data, name)
    except EOFError:
        raise ValueError(f"cannot read audio {name}: the WAV header is truncated") from None
    if samples.shape[0] == 0:
        raise ValueError(f"cannot read audio {name}: the WAV file holds no samples "
                         "(zero-length audio)")
    check_sample_rate(rate, f"audio {name}")
    check_samples(samples, f"audio {name}")
    return samples.mean(axis=1, dtype=np.float64).astype(np.float32), rate


def check_sample_rate(rate: object, what: str) -> int:
    """``rate`` as an int within the sample-rate limits, else ValueError naming
    ``what``. A bool is not a rate (``True`` would read as 1 Hz)."""
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)):
        raise ValueError(f"cannot read {what}: the sample rate must be an integer, got "
                         f"{rate!r}")
    low, high = MIN_SAMPLE_RATE.value(), MAX_SAMPLE_RATE.value()
    if not low <= int(rate) <= high:
        raise ValueError(f"cannot read {what}: sample rate {int(rate):,} Hz is outside "
                         f"{low:,}..{high:,} Hz (MMCORE_LIMIT_AUDIO_MIN_RATE / _MAX_RATE "
                         "change the bounds)")
    return int(rate)


def check_samples(samples: np.ndarray, what: str) -> None:
    """ValueError naming ``what`` for NaN/infinite samples or ones beyond the amplitude
    limit."""
    if not np.isfinite(samples).all():
        raise ValueError(f"cannot read {what}: it holds NaN or infinite samples")
    peak = float(np.abs(samples).max()) if samples.size else 0.0
    if peak > MAX_ABS_SAMPLE.value():
        raise ValueError(f"cannot read {what}: sample magnitude {peak:.3g} is beyond "
                         f"{MAX_ABS_SAMPLE.value():g}; float audio is expected in [-1, 1] "
                         f"{MAX_ABS_SAMPLE.hint()}")


def _read_pcm(data: bytes, name: str) -> tuple[np.ndarray, int]:
    """PCM through ``wave`` -> ((L, C) float32, rate)."""
    try:
        with wave.open(io.BytesIO(data), "rb") as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            declared = wav.getnframes()
            frames = wav.readframes(declared)
    except (RuntimeError, struct.error) as exc:  # chunk.Chunk's seek past a chunk's end
        raise ValueError(f"cannot read audio {name}: not a readable WAV file (malformed "
                         f"chunks{': ' + str(exc) if str(exc) else ''})") from None
    _check_length(len(frames), declared * width * channels, name)
    return _decode_pcm(frames, width, channels, name), rate


def _check_length(held: int, declared: int, name: str) -> None:
    """A header that promises more sample bytes than the file holds is a truncated file."""
    if held < declared:
        raise ValueError(f"cannot read audio {name}: the WAV header declares {declared:,} "
                         f"bytes of samples but the file holds {held:,} (truncated?)")


def _decode_pcm(data: bytes, width: int, channels: int, name: str) -> np.ndarray:
    """Little-endian interleaved PCM bytes -> (L, C) float32 in [-1, 1]."""
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
        raise ValueError(f"cannot read audio {name}: unsupported PCM sample width "
                         f"{8 * width} bits")
    return (ints / scale).astype(np.float32).reshape(-1, channels)


def _chunks(blob: bytes, name: str) -> dict[bytes, bytes]:
    """RIFF/WAVE chunk id -> payload (the first of each id)."""
    if len(blob) < 12 or blob[:4] != b"RIFF" or blob[8:12] != b"WAVE":
        raise ValueError(f"cannot read audio {name}: not a WAV file (no RIFF/WAVE header)")
    chunks: dict[bytes, bytes] = {}
    pos = 12
    while pos + 8 <= len(blob):
        cid, size = blob[pos : pos + 4], struct.unpack("<I", blob[pos + 4 : pos + 8])[0]
        payload = blob[pos + 8 : pos + 8 + size]
        if cid == b"data":
            _check_length(len(payload), size, name)
        chunks.setdefault(cid, payload)
        pos += 8 + size + (size & 1)  # chunks are word aligned
    return chunks


def _read_riff(blob: bytes, name: str) -> tuple[np.ndarray, int]:
    """Non-PCM WAV (IEEE float, or PCM/float inside WAVE_FORMAT_EXTENSIBLE) -> ((L, C), rate)."""
    chunks = _chunks(blob, name)
    fmt, data = chunks.get(b"fmt "), chunks.get(b"data")
    if fmt is None or len(fmt) < 16 or data is None:
        raise ValueError(f"cannot read audio {name}: the WAV file lacks a fmt or data chunk")
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == WAVE_FORMAT_EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack("<H", fmt[24:26])[0]  # first two bytes of the sub-format GUID
    if channels == 0:
        raise ValueError(f"cannot read audio {name}: the WAV header declares 0 channels")
    if tag == WAVE_FORMAT_PCM:
        return _decode_pcm(data, bits // 8, channels, name), rate
    if tag == WAVE_FORMAT_IEEE_FLOAT and bits in (32, 64):
        dtype = "<f4" if bits == 32 else "<f8"
        width = bits // 8 * channels
        values = np.frombuffer(data[: len(data) - len(data) % width], dtype=dtype)
        check_samples(values, f"audio {name}")  # before float64 -> float32 can overflow
        return values.astype(np.float32).reshape(-1, channels), rate
    raise ValueError(f"cannot read audio {name}: unsupported WAV encoding (format tag "
                     f"{tag:#06x}, {bits} bits); use PCM or 32/64-bit float")

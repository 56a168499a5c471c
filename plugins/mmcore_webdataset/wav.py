"""WAV bytes from a shard -> ``(waveform, sample_rate)``, the pair the audio preprocessor
takes. PCM only (8/16/24/32-bit), channels averaged to mono, float32 in [-1, 1]."""

from __future__ import annotations

import io
import wave

import numpy as np

#: bytes per sample -> (numpy dtype, full scale)
_PCM = {1: ("u1", 128.0), 2: ("<i2", 2.0**15), 4: ("<i4", 2.0**31)}


def decode_wav(data: bytes) -> tuple[np.ndarray, int]:
    """PCM WAV bytes -> (mono waveform (L,) float32, sample rate). Raises on anything
    else (float WAV, truncated header), which the shard reader counts as corrupt."""
    with wave.open(io.BytesIO(data), "rb") as wav:
        channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
        frames = wav.readframes(wav.getnframes())
    samples = _pcm(frames[: len(frames) - len(frames) % (width * channels)], width)
    if samples.size == 0:
        raise ValueError("the WAV file holds no samples")
    return samples.reshape(-1, channels).mean(axis=1).astype(np.float32), rate


def _pcm(frames: bytes, width: int) -> np.ndarray:
    """Little-endian PCM -> float64 samples in [-1, 1], interleaved."""
    if width == 3:  # 24-bit: widen to 32-bit by a zero low byte
        padded = np.zeros((len(frames) // 3, 4), dtype=np.uint8)
        padded[:, 1:] = np.frombuffer(frames, dtype=np.uint8).reshape(-1, 3)
        frames, width = padded.tobytes(), 4
    if width not in _PCM:
        raise ValueError(f"unsupported PCM sample width: {8 * width} bits")
    dtype, scale = _PCM[width]
    values = np.frombuffer(frames, dtype=dtype).astype(np.float64)
    return (values - 128.0 if width == 1 else values) / scale

"""CLAP's log-mel spectrogram (LAION CLAP / ``transformers.ClapFeatureExtractor``).

Unlike Whisper's features: 48 kHz audio, a 1024-point periodic-Hann STFT every 480 samples
(10 ms), 64 mel bands between 50 Hz and 14 kHz, and power in decibels (``10 log10``) with
no dynamic-range clamp (the reference ignores its ``top_db``) and no rescaling. Two filter
banks exist: ``slaney`` (librosa's: Slaney mel scale, area-normalised; CLAP's
``rand_trunc`` models) and ``htk`` (torchaudio's: HTK mel scale, unnormalised; CLAP's
``fusion`` models). Everything is computed in float64 and returned as float32, as the
reference does.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import numpy as np
import torch
from torch import Tensor

MelScale = Literal["slaney", "htk"]
#: floor of the mel power before the logarithm (-100 dB)
MEL_FLOOR = 1e-10


def hz_to_mel(freq: np.ndarray, scale: MelScale) -> np.ndarray:
    """Hz -> mels: HTK's ``2595 log10(1 + f / 700)`` or Slaney's linear-then-log scale."""
    freq = np.asarray(freq, dtype=np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + freq / 700.0)
    log_region = freq >= 1000.0
    safe = np.where(log_region, freq, 1000.0)
    return np.where(log_region, 15.0 + np.log(safe / 1000.0) * (27.0 / np.log(6.4)),
                    3.0 * freq / 200.0)


def mel_to_hz(mels: np.ndarray, scale: MelScale) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    mels = np.asarray(mels, dtype=np.float64)
    if scale == "htk":
        return 700.0 * (np.power(10.0, mels / 2595.0) - 1.0)
    return np.where(mels >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (mels - 15.0)),
                    200.0 * mels / 3.0)


@lru_cache(maxsize=8)
def mel_filters(n_mels: int, n_fft: int, sample_rate: int, f_min: float, f_max: float,
                scale: MelScale) -> Tensor:
    """Triangular filters, Slaney-normalised for ``scale="slaney"``. (n_fft // 2 + 1, n_mels)
    float64."""
    fft_freqs = np.linspace(0, sample_rate // 2, n_fft // 2 + 1)  # (bins,)
    mel_edges = np.linspace(hz_to_mel(np.array(f_min), scale), hz_to_mel(np.array(f_max), scale),
                            n_mels + 2)
    edges = mel_to_hz(mel_edges, scale)  # (n_mels + 2,) Hz
    slopes = edges[None, :] - fft_freqs[:, None]  # (bins, n_mels + 2)
    gaps = np.diff(edges)
    rising = -slopes[:, :-2] / gaps[:-1]
    falling = slopes[:, 2:] / gaps[1:]
    filters = np.maximum(0.0, np.minimum(rising, falling))  # (bins, n_mels)
    if scale == "slaney":
        filters = filters * (2.0 / (edges[2:] - edges[:-2]))[None, :]  # equal area
    return torch.from_numpy(filters)


def log_mel_db(waveforms: Tensor, *, n_fft: int, hop_length: int, filters: Tensor) -> Tensor:
    """Waveforms (B, L) -> log-mel power in dB (B, frames, n_mels) float32, with
    ``frames = 1 + L // hop_length`` (centred frames, reflect padding)."""
    if waveforms.shape[-1] <= n_fft // 2:
        raise ValueError(f"audio of {waveforms.shape[-1]} samples is too short for one "
                         f"{n_fft}-sample frame")
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    stft = torch.stft(waveforms.double(), n_fft, hop_length, window=window, center=True,
                      pad_mode="reflect", return_complex=True)  # (B, bins, frames)
    power = stft.real**2 + stft.imag**2
    mel = (filters.T @ power).clamp(min=MEL_FLOOR)  # (B, n_mels, frames)
    return (10.0 * torch.log10(mel)).transpose(1, 2).float()  # (B, frames, n_mels)

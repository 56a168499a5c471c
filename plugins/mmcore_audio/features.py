"""Whisper's log-mel spectrogram: 25 ms periodic-Hann frames every 10 ms at 16 kHz, power
spectrum, Slaney mel filters (0-8 kHz, area-normalised), log10, an 80 dB dynamic range
below the loudest bin, then (x + 4) / 4."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

SAMPLE_RATE = 16_000
N_FFT = 400  # 25 ms
HOP_LENGTH = 160  # 10 ms
F_MAX = 8000.0


def hz_to_mel(freq: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    mels = 3.0 * freq / 200.0
    log_region = freq >= 1000.0
    return np.where(log_region, 15.0 + np.log(np.maximum(freq, 1e-10) / 1000.0)
                    * (27.0 / np.log(6.4)), mels)


def mel_to_hz(mels: np.ndarray) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    freq = 200.0 * mels / 3.0
    return np.where(mels >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (mels - 15.0)), freq)


@lru_cache(maxsize=8)
def mel_filters(n_mels: int, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE,
                f_min: float = 0.0, f_max: float = F_MAX) -> Tensor:
    """Triangular Slaney filters with Slaney (area) normalisation. (n_fft // 2 + 1, n_mels)"""
    fft_freqs = np.linspace(0, sample_rate // 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(np.array(f_min)), hz_to_mel(np.array(f_max)),
                                  n_mels + 2))  # (n_mels + 2,) filter edges and centres, Hz
    slopes = edges[None, :] - fft_freqs[:, None]  # (bins, n_mels + 2)
    gaps = np.diff(edges)
    rising = -slopes[:, :-2] / gaps[:-1]
    falling = slopes[:, 2:] / gaps[1:]
    filters = np.maximum(0.0, np.minimum(rising, falling))  # (bins, n_mels)
    filters *= 2.0 / (edges[2:] - edges[:-2])[None, :]  # equal area per filter
    return torch.from_numpy(filters).float()


def log_mel(waveform: Tensor, n_mels: int) -> Tensor:
    """Mono 16 kHz waveforms (L,) or (B, L) -> Whisper log-mel features (n_mels, L // 160)
    or (B, n_mels, L // 160); each item's dynamic range is clamped on its own.

    Frames are centred (reflect padding) and the last STFT frame is dropped, as Whisper does.
    """
    if waveform.dim() not in (1, 2):
        raise ValueError(f"log_mel takes waveforms (L,) or (B, L), got {tuple(waveform.shape)}")
    if waveform.shape[-1] <= N_FFT // 2:
        raise ValueError(f"audio of {waveform.shape[-1]} samples is too short for one "
                         f"{N_FFT}-sample frame; give at least {N_FFT // 2 + 1} samples at 16 kHz")
    window = torch.hann_window(N_FFT, periodic=True)
    stft = torch.stft(waveform.float(), N_FFT, HOP_LENGTH, window=window, center=True,
                      pad_mode="reflect", return_complex=True)  # (..., bins, frames)
    power = stft[..., :-1].abs() ** 2  # (..., bins, L // hop)
    mel = mel_filters(n_mels).T @ power  # (..., n_mels, L // hop)
    spec = torch.clamp(mel, min=1e-10).log10()
    spec = torch.maximum(spec, spec.amax(dim=(-2, -1), keepdim=True) - 8.0)
    return (spec + 4.0) / 4.0

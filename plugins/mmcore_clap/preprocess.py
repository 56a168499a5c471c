"""``clap-audio``: audio items -> CLAP log-mel features (B, frames, n_mels), as
``transformers.ClapFeatureExtractor`` computes them for single-channel (unfused) models.

Every waveform is brought to ``max_length_s`` seconds: a shorter one is repeated and
zero-padded (``repeatpad``, CLAP's default), repeated and cut (``repeat``) or zero-padded
(``pad``); a longer one is cropped, at its start (deterministic, the default here) or at a
random offset (``crop: random``, CLAP's ``rand_trunc`` training augmentation).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import Tensor

from mmcore.builder import BuildContext
from mmcore.registry import ComponentConfig
from mmcore_clap.audio_io import load_waveform
from mmcore_clap.features import MelScale, log_mel_db, mel_filters


class ClapAudioConfig(ComponentConfig):
    """Defaults are LAION's ``clap-htsat-unfused`` feature extractor."""

    sample_rate: int = Field(48_000, gt=0)
    n_mels: int = Field(64, gt=0)
    n_fft: int = Field(1024, ge=4)
    hop_length: int = Field(480, gt=0)
    max_length_s: float = Field(10.0, gt=0)
    f_min: float = Field(50.0, ge=0)
    f_max: float = Field(14_000.0, gt=0)
    #: slaney: librosa filters (CLAP's rand_trunc models); htk: torchaudio's (fusion models)
    mel_scale: MelScale = "slaney"
    padding: Literal["repeatpad", "repeat", "pad"] = "repeatpad"
    crop: Literal["start", "random"] = "start"
    #: seed of ``crop: random``
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> ClapAudioConfig:
        if self.f_min >= self.f_max:
            raise ValueError(f"f_min {self.f_min} must be below f_max {self.f_max}")
        if self.max_samples <= self.n_fft // 2:
            raise ValueError(f"max_length_s {self.max_length_s} holds {self.max_samples} "
                             f"samples, too few for one {self.n_fft}-point frame")
        return self

    @property
    def max_samples(self) -> int:
        return round(self.max_length_s * self.sample_rate)

    @property
    def frames(self) -> int:
        """Frames per item: centred STFT frames over ``max_samples``."""
        return 1 + self.max_samples // self.hop_length


class ClapAudioPreprocessor:
    """items -> ``(B, frames, n_mels)`` float32 log-mel dB. An item is a WAV path, a
    ``(waveform, sample_rate)`` pair (resampled to ``sample_rate``) or a bare 1-D
    waveform already at ``sample_rate``."""

    def __init__(self, cfg: ClapAudioConfig) -> None:
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)

    @classmethod
    def from_config(cls, cfg: ClapAudioConfig, ctx: BuildContext) -> ClapAudioPreprocessor:
        return cls(cfg)

    def filters(self) -> Tensor:
        cfg = self.cfg
        return mel_filters(cfg.n_mels, cfg.n_fft, cfg.sample_rate, cfg.f_min, cfg.f_max,
                           cfg.mel_scale)

    def __call__(self, items: Sequence[Any]) -> Tensor:
        if isinstance(items, (str, Path)) or len(items) == 0:
            raise ValueError("give a non-empty list of audio items")
        waveforms = [self.fit(self._load(item)) for item in items]
        batch = torch.from_numpy(np.stack(waveforms))  # (B, max_samples) float64
        return log_mel_db(batch, n_fft=self.cfg.n_fft, hop_length=self.cfg.hop_length,
                          filters=self.filters())

    def _load(self, item: Any) -> np.ndarray:
        try:
            return load_waveform(item, self.cfg.sample_rate)
        except ValueError as exc:
            where = f"audio {item}" if isinstance(item, (str, Path)) else "a waveform"
            raise ValueError(f"cannot featurise {where}: {exc}") from None

    def fit(self, waveform: np.ndarray) -> np.ndarray:
        """(L,) -> (max_samples,): cropped, or repeated and/or zero-padded."""
        target = self.cfg.max_samples
        length = waveform.shape[0]
        if length > target:
            start = 0 if self.cfg.crop == "start" else int(self.rng.integers(0, length - target
                                                                             + 1))
            return waveform[start : start + target]
        if length < target and self.cfg.padding == "repeat":
            waveform = np.tile(waveform, target // length + 1)[:target]
        elif length < target and self.cfg.padding == "repeatpad":
            waveform = np.tile(waveform, target // length)
        return np.pad(waveform, (0, target - waveform.shape[0]))

"""Audio (file paths, waveforms) -> Whisper log-mel features, padded to 30 s or to the batch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import Tensor

from mmcore.builder import BuildContext
from mmcore.registry import ComponentConfig
from mmcore_audio.backends import read_audio
from mmcore_audio.features import HOP_LENGTH, SAMPLE_RATE, log_mel
from mmcore_audio.resample import input_span, resample
from mmcore_audio.wav import check_sample_rate, check_samples


class AudioPreprocessConfig(ComponentConfig):
    n_mels: int = Field(80, gt=0)
    #: pad or trim every waveform to this many seconds (Whisper: 30 s -> 3000 frames);
    #: None keeps each length and pads the features to the batch's longest, with a mask
    pad_to_seconds: float | None = Field(30.0, gt=0)
    #: sample rate of bare waveforms given without one; None requires (array, rate) items
    sample_rate: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _whole_frames(self) -> AudioPreprocessConfig:
        if self.pad_to_seconds is not None:
            samples = self.pad_to_seconds * SAMPLE_RATE
            if abs(samples - round(samples)) > 1e-6 or round(samples) % HOP_LENGTH:
                raise ValueError(f"pad_to_seconds {self.pad_to_seconds} must be a whole "
                                 "number of 10 ms frames")
        return self

    @property
    def pad_samples(self) -> int | None:
        """The padded length in 16 kHz samples, or None."""
        return None if self.pad_to_seconds is None else round(self.pad_to_seconds * SAMPLE_RATE)


class AudioPreprocessor:
    """items -> features.

    An item is an audio file path (WAV; FLAC, OGG, MP3 with soundfile), a
    ``(waveform, sample_rate)`` pair, or a bare 1-D waveform (numpy or torch, at
    ``sample_rate``). Each is made mono, resampled to 16 kHz and turned
    into Whisper log-mel features. With ``pad_to_seconds`` set: ``(B, n_mels, frames)``
    (Whisper attends to the padding; no mask). Without: ``{"features": (B, n_mels, F),
    "mask": (B, F)}``, each item featurised alone (so its values do not depend on the
    batch) and zero-padded to the longest ``F``.
    """

    def __init__(self, cfg: AudioPreprocessConfig) -> None:
        self.cfg = cfg
        # what it emits (validation compares them with the tokenizer's): mel bins, and the
        # frame count when padded (None: each item's own length)
        self.n_mels = cfg.n_mels
        pad = cfg.pad_samples
        self.context_length = None if pad is None else pad // HOP_LENGTH

    @classmethod
    def from_config(cls, cfg: AudioPreprocessConfig, ctx: BuildContext) -> AudioPreprocessor:
        return cls(cfg)

    def __call__(self, items: Sequence[Any]) -> Tensor | dict[str, Tensor]:
        if isinstance(items, (str, Path)) or len(items) == 0:
            raise ValueError("give a non-empty list of audio items")
        waveforms = [self.waveform(item) for item in items]  # each (L_i,) at 16 kHz
        if self.cfg.pad_samples is not None:
            return log_mel(torch.stack(waveforms), self.cfg.n_mels)  # one batched STFT
        pairs = zip(waveforms, items, strict=True)
        return _pad_batch([self._features(w, item) for w, item in pairs])

    def waveform(self, item: Any) -> Tensor:
        """One item -> its mono 16 kHz waveform (L,), padded or trimmed when configured."""
        waveform, rate = self.load(item)
        target = self.cfg.pad_samples
        if target is not None:  # trim before resampling: never resample what is cut
            waveform = waveform[: input_span(target, rate, SAMPLE_RATE)]
        waveform = resample(waveform, rate, SAMPLE_RATE)
        if target is not None:
            waveform = waveform[:target]
            waveform = torch.nn.functional.pad(waveform, (0, target - waveform.shape[0]))
        return waveform

    def _features(self, waveform: Tensor, item: Any) -> Tensor:
        """(L,) -> (n_mels, L // 160); a too-short item is named in the error."""
        try:
            return log_mel(waveform, self.cfg.n_mels)
        except ValueError as exc:
            where = f"audio {item}" if isinstance(item, (str, Path)) else "a waveform"
            raise ValueError(f"cannot featurise {where}: {exc}") from None

    def load(self, item: Any) -> tuple[Tensor, int]:
        """The item's mono waveform (L,) float32 and its sample rate."""
        if isinstance(item, (str, Path)):
            samples, rate = read_audio(item)
            return torch.from_numpy(samples), rate
        if isinstance(item, tuple):
            if len(item) != 2 or isinstance(item[1], bool) or not isinstance(
                    item[1], (int, np.integer)) or item[1] <= 0:
                raise TypeError("an audio pair must be (waveform, sample_rate: positive int)")
            return _mono(item[0]), check_sample_rate(item[1], "a waveform")
        if self.cfg.sample_rate is None:
            raise ValueError("a bare waveform needs a sample rate: give (waveform, rate) "
                             "or set sample_rate in the preprocessor config")
        return _mono(item), check_sample_rate(self.cfg.sample_rate, "a waveform")


def mono_samples(array: Any) -> np.ndarray:
    """A 1-D numpy/torch waveform or list of floats -> (L,) float64; integer samples are
    scaled to [-1, 1). Public: other audio plugins read waveforms through it."""
    if isinstance(array, Tensor):
        array = array.detach().cpu().numpy()
    if isinstance(array, (list, tuple)):
        array = np.asarray(array, dtype=np.float64)
    if not isinstance(array, np.ndarray):
        raise TypeError(f"cannot read audio from {type(array).__name__}; give a WAV path, a "
                        "1-D waveform or a (waveform, sample_rate) pair")
    if array.ndim != 1:
        raise ValueError(f"a waveform must be 1-D (mono samples), got shape {array.shape}")
    if array.shape[0] == 0:
        raise ValueError("the waveform is empty (zero-length audio)")
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        middle = (int(info.max) + int(info.min) + 1) / 2  # 0 for signed, 128 for uint8
        return (array.astype(np.float64) - middle) / (int(info.max) + 1 - middle)
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"waveform samples must be numbers, got dtype {array.dtype}")
    check_samples(array, "a waveform")
    return array.astype(np.float64)


def _mono(array: Any) -> Tensor:
    """:func:`mono_samples` as a (L,) float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(mono_samples(array), dtype=np.float32))


def _pad_batch(features: list[Tensor]) -> dict[str, Tensor]:
    """[(n_mels, F_i)] -> {"features": (B, n_mels, F), "mask": (B, F)}, zero-padded."""
    longest = max(f.shape[1] for f in features)
    out = torch.zeros(len(features), features[0].shape[0], longest)
    mask = torch.zeros(len(features), longest, dtype=torch.bool)
    for i, f in enumerate(features):
        out[i, :, : f.shape[1]] = f
        mask[i, : f.shape[1]] = True
    return {"features": out, "mask": mask}


"""Raw audio items -> mono float64 waveforms at a given rate.

WAV decoding and band-limited resampling come from the ``mmcore_audio`` plugin's public
API (``mmcore_audio.read_wav``, ``mmcore_audio.resample``), the one WAV decoder every
plugin shares; they are imported only when a WAV path or a different sample rate needs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    try:
        from mmcore_audio import read_wav
    except ImportError as exc:  # pragma: no cover - mmcore_audio ships with mmcore
        raise ValueError(f"reading WAV files needs the mmcore_audio plugin ({exc})") from None
    return read_wav(path)


def _resample(waveform: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return waveform
    try:
        from mmcore_audio import resample
    except ImportError as exc:  # pragma: no cover
        raise ValueError(f"resampling {rate} Hz audio to {target} Hz needs the mmcore_audio "
                         f"plugin ({exc})") from None
    out = resample(torch.from_numpy(waveform), rate, target)
    return out.numpy()


def mono(array: Any) -> np.ndarray:
    """A 1-D waveform (numpy, torch or list) -> (L,) float64 in [-1, 1) for integers."""
    from mmcore_audio import mono_samples

    return mono_samples(array)


def load_waveform(item: Any, rate: int) -> np.ndarray:
    """A WAV path, a ``(waveform, sample_rate)`` pair or a bare waveform (taken to be at
    ``rate``) -> mono (L,) float64 at ``rate``."""
    if isinstance(item, (str, Path)):
        samples, source_rate = _read_wav(Path(item))
        return _resample(samples.astype(np.float64), source_rate, rate)
    if isinstance(item, tuple):
        if len(item) != 2 or isinstance(item[1], bool) or \
                not isinstance(item[1], (int, np.integer)) or item[1] <= 0:
            raise TypeError("an audio pair must be (waveform, sample_rate: positive int)")
        from mmcore_audio import check_sample_rate

        return _resample(mono(item[0]), check_sample_rate(item[1], "a waveform"), rate)
    return mono(item)

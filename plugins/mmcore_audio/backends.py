"""Audio files by format: WAV through the one built-in decoder (:mod:`mmcore_audio.wav`),
FLAC, OGG (Vorbis/Opus) and MP3 through the optional ``soundfile`` package (libsndfile),
used when it is installed.

The format is told from the file's first bytes (``RIFF....WAVE``, ``fLaC``, ``OggS``,
``ID3`` or an MPEG frame sync), else from its suffix. Whatever the backend, the samples get
the WAV decoder's limits: at least one sample, finite values no larger than
``MAX_ABS_SAMPLE``, a sample rate within ``MIN_SAMPLE_RATE..MAX_SAMPLE_RATE``; channels are
averaged to mono float32.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from mmcore_audio.wav import check_sample_rate, check_samples, read_wav

#: formats the soundfile backend reads, by the suffixes that name them
SOUNDFILE_SUFFIXES = {".flac": "FLAC", ".ogg": "OGG", ".oga": "OGG", ".opus": "OGG",
                      ".mp3": "MP3"}
INSTALL = "pip install soundfile"


def sniff(head: bytes, suffix: str) -> str | None:
    """The format of a file from its first bytes (else its suffix): WAV, FLAC, OGG, MP3
    or None when neither tells."""
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "WAV"
    if head[:4] == b"fLaC":
        return "FLAC"
    if head[:4] == b"OggS":
        return "OGG"
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "MP3"
    if suffix in (".wav", ".wave"):
        return "WAV"
    return SOUNDFILE_SUFFIXES.get(suffix)


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """An audio file -> (mono waveform (L,) float32, sample rate). WAV always uses the
    built-in decoder; other formats need the ``soundfile`` package, and a clear ValueError
    names it when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no audio file at {path}")
    with path.open("rb") as fh:
        head = fh.read(12)
    fmt = sniff(head, path.suffix.lower())
    if fmt == "WAV":
        return read_wav(path)
    soundfile = _soundfile()
    if soundfile is None:
        what = fmt or f"audio of this kind ({path.suffix or 'no suffix'})"
        raise ValueError(f"cannot read {path.name}: {what} needs the 'soundfile' package "
                         f"({INSTALL}); without it only WAV is read")
    return read_with_soundfile(soundfile, path)


def _soundfile() -> Any:
    """The soundfile module, or None when it is not installed (or libsndfile is missing)."""
    try:
        return importlib.import_module("soundfile")
    except (ImportError, OSError):
        return None


def read_with_soundfile(soundfile: Any, path: Path) -> tuple[np.ndarray, int]:
    """Decode ``path`` with soundfile and apply the WAV decoder's limits."""
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        raise ValueError(f"cannot read audio {path}: soundfile could not decode it "
                         f"({str(exc).strip() or type(exc).__name__})") from None
    samples = np.asarray(data)
    if samples.ndim != 2 or samples.shape[0] == 0:
        raise ValueError(f"cannot read audio {path}: the file holds no samples "
                         "(zero-length audio)")
    check_sample_rate(int(rate) if isinstance(rate, (int, np.integer)) else rate,
                      f"audio {path}")
    check_samples(samples, f"audio {path}")
    return samples.mean(axis=1, dtype=np.float64).astype(np.float32), int(rate)

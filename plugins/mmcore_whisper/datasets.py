"""``audio-text-folder``: speech clips and their transcripts, ``talk.wav`` beside
``talk.txt`` (any depth below ``root``), for fine-tuning Whisper (``whisper-lm``).

Items are ``{audio: path, text: transcript}``. The train/eval split is a seeded hash of each
clip's path relative to ``root`` (zlib CRC-32 of ``"{seed}:{path}"``), so a clip stays in
its split when files are added or removed. Audio is read by the model's preprocessor (WAV
built in; FLAC/OGG/MP3 with the soundfile package); clips longer than its window (Whisper:
30 s) are cut there, so keep clips at most 30 s long.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

from pydantic import Field

from mmcore.registry import ComponentConfig

SPLITS = ("train", "eval")


class AudioTextFolderConfig(ComponentConfig):
    #: a folder of audio files, each with a .txt transcript of the same stem beside it
    root: str
    split: str = "train"
    #: share of the clips (by hash) in the eval split
    eval_fraction: float = Field(0.1, ge=0, lt=1)
    seed: int = Field(0, ge=0)
    extensions: list[str] = Field(default_factory=lambda: [".wav", ".flac", ".ogg", ".mp3"],
                                  min_length=1)
    #: the batch keys: the model's audio modality and the objective's transcripts
    modality: str = "audio"
    text: str = "text"


def in_eval(relative: str, seed: int, fraction: float) -> bool:
    """Whether the clip at ``relative`` (a POSIX path) is in the eval split."""
    return zlib.crc32(f"{seed}:{relative}".encode()) / 2**32 < fraction


class AudioTextFolderDataset:
    """``ds[i] -> {modality: path, text: transcript}`` of one split, clips in path order."""

    def __init__(self, cfg: AudioTextFolderConfig) -> None:
        if cfg.split not in SPLITS:
            raise ValueError(f"audio-text-folder has no split {cfg.split!r}; splits are "
                             f"{', '.join(SPLITS)}")
        self.cfg = cfg
        self.splits = SPLITS
        root = Path(cfg.root)
        pairs = _pairs(root, cfg.extensions)
        self.items = [(audio, text) for audio, text in pairs
                      if in_eval(audio.relative_to(root).as_posix(), cfg.seed,
                                 cfg.eval_fraction) == (cfg.split == "eval")]
        if not self.items:
            raise ValueError(f"audio-text-folder: the {cfg.split} split of {root} is empty "
                             f"({len(pairs)} clips, eval_fraction {cfg.eval_fraction})")

    @classmethod
    def from_config(cls, cfg: AudioTextFolderConfig, ctx: Any = None) -> AudioTextFolderDataset:
        return cls(cfg)

    def split(self, name: str) -> AudioTextFolderDataset:
        return AudioTextFolderDataset(self.cfg.model_copy(update={"split": name}))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.items):
            raise IndexError(f"index {index} out of range for {len(self.items)} clips")
        audio, text = self.items[index]
        return {self.cfg.modality: str(audio), self.cfg.text: text}


def _pairs(root: Path, extensions: list[str]) -> list[tuple[Path, str]]:
    """(audio path, transcript) for every audio file below ``root``; ValueError naming a
    clip without its .txt or an empty transcript."""
    if not root.is_dir():
        raise ValueError(f"audio-text-folder: no folder at {root}")
    suffixes = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    clips = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not clips:
        raise ValueError(f"audio-text-folder: no {', '.join(sorted(suffixes))} files in {root}")
    pairs = []
    for clip in clips:
        transcript = clip.with_suffix(".txt")
        if not transcript.is_file():
            raise ValueError(f"audio-text-folder: {clip} has no transcript {transcript.name} "
                             "beside it")
        text = transcript.read_text(encoding="utf-8").strip()
        if not text:
            raise ValueError(f"audio-text-folder: {transcript} is empty")
        pairs.append((clip, text))
    return pairs

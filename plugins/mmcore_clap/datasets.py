"""Datasets with audio: ``shapes-sounds`` (the built-in shapes plus a synthetic sound per
item) and ``audio-folder`` (WAV files in one subfolder per class, for zero-shot eval)."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from mmcore.data import open_dataset
from mmcore.registry import ComponentConfig
from mmcore.spec import ComponentRef
from mmcore_clap.sounds import render_sound

#: LAION CLAP's zero-shot prompt
AUDIO_TEMPLATES: tuple[str, ...] = ("this is a sound of {}.",)


class ShapesSoundsConfig(ComponentConfig):
    """The shapes dataset's own params, and the sound's."""

    image_size: int = Field(32, ge=8, le=512)
    train_size: int = Field(50_000, gt=0)
    eval_size: int = Field(600, gt=0)
    seed: int = Field(0, ge=0)
    split: str = "train"
    sample_rate: int = Field(16_000, ge=4000)
    seconds: float = Field(0.5, gt=0, le=30)
    #: std of the added white noise
    noise: float = Field(0.02, ge=0, le=1)


def _vocabulary(class_names: list[str]) -> tuple[list[str], list[str]]:
    """Colours and shapes in class-name order, from names such as ``"red circle"``."""
    pairs = [name.split(" ") for name in class_names]
    if any(len(p) != 2 for p in pairs):
        raise ValueError(f"shapes-sounds needs 'colour shape' class names, got {class_names}")
    return list(dict.fromkeys(p[0] for p in pairs)), list(dict.fromkeys(p[1] for p in pairs))


class ShapesSoundsDataset:
    """``ds[i] -> {"image", "text", "label"}`` of the registered ``shapes`` dataset, plus
    ``"audio": (waveform (L,) float32, sample_rate)`` whose pitch names the colour and
    whose rhythm names the shape. Splits, class names and templates are shapes' own."""

    def __init__(self, cfg: ShapesSoundsConfig) -> None:
        self.cfg = cfg
        ref = ComponentRef(type="shapes", image_size=cfg.image_size, train_size=cfg.train_size,
                           eval_size=cfg.eval_size, seed=cfg.seed, split=cfg.split)
        self.shapes = open_dataset(ref, cfg.split)
        self.class_names: list[str] = list(getattr(self.shapes, "class_names", []))
        self.templates: list[str] = list(getattr(self.shapes, "templates", []))
        self.splits: tuple[str, ...] = tuple(getattr(self.shapes, "splits", (cfg.split,)))
        self.colours, self.shape_names = _vocabulary(self.class_names)
        self.stream = zlib.crc32(cfg.split.encode())

    @classmethod
    def from_config(cls, cfg: ShapesSoundsConfig, ctx: Any = None) -> ShapesSoundsDataset:
        return cls(cfg)

    def split(self, name: str) -> ShapesSoundsDataset:
        """The same dataset, another split (those of shapes: train, eval, ...)."""
        if name not in self.splits:
            raise ValueError(f"shapes-sounds has no split {name!r}; splits are "
                             f"{', '.join(self.splits)}")
        return ShapesSoundsDataset(self.cfg.model_copy(update={"split": name}))

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.shapes[index])  # raises IndexError out of range
        colour, shape = self.class_names[item["label"]].split(" ")
        rng = np.random.default_rng((self.cfg.seed, self.stream, index))
        sound = render_sound(self.colours.index(colour), self.shape_names.index(shape), rng,
                             rate=self.cfg.sample_rate, seconds=self.cfg.seconds,
                             noise=self.cfg.noise)
        item["audio"] = (sound, self.cfg.sample_rate)
        return item


class AudioFolderConfig(ComponentConfig):
    #: a folder with one subfolder per class, holding that class's audio files
    root: str
    extensions: list[str] = Field(default_factory=lambda: [".wav"], min_length=1)
    #: zero-shot prompts, each with one {} for the class name
    templates: list[str] = Field(default_factory=lambda: list(AUDIO_TEMPLATES), min_length=1)
    #: the modality key of each item (the model's audio modality)
    modality: str = "audio"
    #: class folder ``dog_bark`` is the class name "dog bark"
    underscores_to_spaces: bool = True

    @field_validator("templates")
    @classmethod
    def _one_slot(cls, templates: list[str]) -> list[str]:
        bad = [t for t in templates if t.count("{}") != 1]
        if bad:
            raise ValueError(f"each template needs exactly one {{}}: {bad}")
        return templates


class AudioFolderDataset:
    """``root/<class>/<file>.wav`` -> ``ds[i] = {modality: path, "label": class index}``.

    Classes are the subfolders in sorted order (hidden ones skipped); a class folder
    without files still names a candidate class. Files are sorted within each class."""

    def __init__(self, cfg: AudioFolderConfig) -> None:
        self.cfg = cfg
        root = Path(cfg.root)
        if not root.is_dir():
            raise ValueError(f"audio-folder: no folder at {root}")
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            raise ValueError(f"audio-folder: {root} has no class subfolders "
                             "(expected root/<class>/<file>.wav)")
        names = [f.name.replace("_", " ") if cfg.underscores_to_spaces else f.name
                 for f in folders]
        self.class_names, self.templates = names, list(cfg.templates)
        suffixes = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in cfg.extensions}
        self.items = [(path, label) for label, folder in enumerate(folders)
                      for path in sorted(folder.iterdir())
                      if path.is_file() and path.suffix.lower() in suffixes]
        if not self.items:
            raise ValueError(f"audio-folder: no {', '.join(sorted(suffixes))} files in the "
                             f"class folders of {root}")

    @classmethod
    def from_config(cls, cfg: AudioFolderConfig, ctx: Any = None) -> AudioFolderDataset:
        return cls(cfg)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.items):
            raise IndexError(f"index {index} out of range for {len(self.items)} items")
        path, label = self.items[index]
        return {self.cfg.modality: str(path), "label": label}


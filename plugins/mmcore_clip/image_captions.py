"""The ``image-captions`` dataset: a folder of images and a captions file (CSV or JSONL)
for image-text retrieval. Items hold image paths, opened only when embedded."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import Field

from mmcore.registry import ComponentConfig
from mmcore_clip.image_folder import existing_folder

#: caption files ``image-captions`` looks for when none is named
CAPTION_FILES = ("captions.csv", "captions.jsonl")


class ImageCaptionsConfig(ComponentConfig):
    #: folder of images; image paths in the captions file are relative to it
    path: str
    #: CSV (columns image, caption) or JSONL ({"image": ..., "caption": str or [str]});
    #: relative to ``path``; default: the folder's captions.csv or captions.jsonl
    captions: str | None = None
    #: the caption column / key
    caption_key: str = Field("caption", min_length=1)


def _caption_file(root: Path, name: str | None) -> Path:
    if name is not None:
        path = root / Path(name).expanduser()
        if not path.is_file():
            raise ValueError(f"captions file not found: {path}")
        return path
    found = [root / n for n in CAPTION_FILES if (root / n).is_file()]
    if len(found) != 1:
        raise ValueError(f"{root}: name the captions file (captions: ...); expected exactly "
                         f"one of {', '.join(CAPTION_FILES)}, found {len(found)}")
    return found[0]


def _csv_rows(path: Path, key: str) -> Iterator[tuple[int, Any, Any]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        if "image" not in columns or key not in columns:
            raise ValueError(f"{path} needs columns 'image' and {key!r}; it has {columns}")
        for number, row in enumerate(reader, start=2):
            yield number, row["image"], row[key]


def _jsonl_rows(path: Path, key: str) -> Iterator[tuple[int, Any, Any]]:
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON: {exc}") from None
            if not isinstance(row, dict) or "image" not in row or key not in row:
                raise ValueError(f"{path}:{number}: needs keys 'image' and {key!r}")
            yield number, row["image"], row[key]


def _captions(value: Any, where: str) -> list[str]:
    captions = value if isinstance(value, list) else [value]
    if not captions or not all(isinstance(c, str) and c.strip() for c in captions):
        raise ValueError(f"{where}: captions must be non-empty strings, got {value!r}")
    return captions


class ImageCaptionsDataset:
    """``{"image": path, "text": caption, "label": image index}`` per caption. An image with
    several captions appears once per caption; ``label`` makes retrieval count any of its
    captions (and any copy of it) as a hit."""

    def __init__(self, cfg: ImageCaptionsConfig) -> None:
        root = existing_folder(cfg.path)
        path = _caption_file(root, cfg.captions)
        rows = _jsonl_rows if path.suffix in (".jsonl", ".json") else _csv_rows
        index: dict[Path, int] = {}
        self.items: list[tuple[str, str, int]] = []
        missing = []
        for number, image, caption in rows(path, cfg.caption_key):
            file = (root / str(image)).resolve()
            if not file.is_file():
                missing.append(f"{path.name}:{number}: {image}")
                continue
            label = index.setdefault(file, len(index))
            self.items += [(str(file), c, label)
                           for c in _captions(caption, f"{path.name}:{number}")]
        if missing:
            raise ValueError(f"{len(missing)} image(s) listed in {path} do not exist under "
                             f"{root}, e.g. {'; '.join(missing[:3])}")
        if not self.items:
            raise ValueError(f"{path} lists no captions")

    @classmethod
    def from_config(cls, cfg: ImageCaptionsConfig, ctx: Any = None) -> ImageCaptionsDataset:
        return cls(cfg)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, text, label = self.items[index]
        return {"image": image, "text": text, "label": label}

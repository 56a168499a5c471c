"""The ``image-folder`` dataset: ``root/<class>/<image>`` for zero-shot classification.

Items hold image *paths* (the model's image preprocessor opens them), so listing a
dataset is cheap and nothing is decoded until it is embedded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmcore.registry import ComponentConfig
from mmcore_clip.templates import load_templates

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


def existing_folder(path: str) -> Path:
    """``path`` as a Path; ValueError if it is not a folder."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ValueError(f"dataset folder not found: {root}")
    return root


def _images(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Image files under ``folder`` (recursively, hidden ones skipped), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


class ImageFolderConfig(ComponentConfig):
    #: root folder with one subfolder of images per class
    path: str
    #: prompt templates: a shipped set (openai, simple) or a text file, one per line
    templates: str = "openai"
    extensions: tuple[str, ...] = IMAGE_SUFFIXES


class ImageFolderDataset:
    """``root/<class>/**/<image>`` -> ``{"image": path, "label": int}``; class names are the
    folder names with underscores as spaces, in sorted folder order (torchvision's)."""

    def __init__(self, cfg: ImageFolderConfig) -> None:
        root = existing_folder(cfg.path)
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            raise ValueError(f"{root} has no class subfolders (expected root/<class>/<image>)")
        suffixes = tuple(s.lower() for s in cfg.extensions)
        self.class_names = [p.name.replace("_", " ") for p in folders]
        self.templates = load_templates(cfg.templates)
        self.items = [(str(path), label) for label, folder in enumerate(folders)
                      for path in _images(folder, suffixes)]
        if not self.items:
            raise ValueError(f"{root} holds no images with suffixes {', '.join(suffixes)}")

    @classmethod
    def from_config(cls, cfg: ImageFolderConfig, ctx: Any = None) -> ImageFolderDataset:
        return cls(cfg)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, label = self.items[index]
        return {"image": path, "label": label}

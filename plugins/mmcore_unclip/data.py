"""``shapes-clip``: the built-in shapes data with the two views unCLIP's models read.

Each item is the ``shapes`` item (``image``, ``text``, ``label``) plus ``clip_image``
(the same shape drawn at ``clip_image_size``, the size the CLIP was trained at, so its
image tower sees what it knows) and ``clip_text`` (the caption again). A spec turns
these into CLIP embeddings with the ``clip-embed`` preprocessor.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from mmcore_shapes.dataset import SPLITS, ShapesConfig, ShapesDataset


class ShapesClipConfig(ShapesConfig):
    #: side of the ``clip_image`` view; None: the ``image`` itself
    clip_image_size: int | None = Field(24, ge=8, le=512)


class ShapesClipDataset(ShapesDataset):
    """``ds[i] -> {"image", "text", "label", "clip_image": PIL.Image, "clip_text": str}``."""

    def __init__(self, cfg: ShapesClipConfig) -> None:
        super().__init__(cfg)
        self.clip_cfg = cfg
        size = cfg.clip_image_size
        self.view = ShapesDataset(ShapesConfig.model_validate(
            {**cfg.model_dump(exclude={"clip_image_size"}), "image_size": size, "masks": False})
        ) if size is not None and size != cfg.image_size else None

    @classmethod
    def from_config(cls, cfg: ShapesConfig, ctx: Any = None) -> ShapesClipDataset:
        assert isinstance(cfg, ShapesClipConfig)
        return cls(cfg)

    def split(self, name: str) -> ShapesClipDataset:
        if name not in SPLITS:
            raise ValueError(f"shapes-clip has no split {name!r}; splits are {', '.join(SPLITS)}")
        return ShapesClipDataset(self.clip_cfg.model_copy(update={"split": name}))

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = super().__getitem__(index)
        item["clip_image"] = self.view[index]["image"] if self.view is not None \
            else item["image"]
        item["clip_text"] = item["text"]
        return item

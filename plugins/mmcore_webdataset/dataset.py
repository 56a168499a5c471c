"""The ``webdataset`` dataset: paired samples streamed from tar shards (img2dataset's
layout), e.g. ``data: {type: webdataset, shards: "data/shards-{000000..000099}.tar"}``."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from mmcore.registry import ComponentConfig
from mmcore_audio import decode_wav
from mmcore_webdataset.reading import Decoder, ShardDataset

SPLITS = ("train", "eval")
IMAGE_EXTENSIONS = ["jpg", "jpeg", "png", "webp"]


class WebDatasetConfig(ComponentConfig):
    #: shards: a folder (its index.json), a glob, brace notation, or a list of those
    shards: str | list[str]
    #: the eval split's shards; without them only ``train`` exists
    eval_shards: str | list[str] | None = None
    #: modality -> extensions; the first one a sample has fills the modality
    modalities: dict[str, list[str]] = Field(
        default_factory=lambda: {"image": list(IMAGE_EXTENSIONS), "text": ["txt"]})
    #: modalities a sample must have (default: all); samples lacking one are skipped
    required: list[str] | None = None
    #: extensions kept as raw bytes instead of decoded
    raw: list[str] = Field(default_factory=list)
    seed: int = Field(0, ge=0)
    shuffle_shards: bool = True
    #: samples held in the shuffle buffer (0: shard order only)
    shuffle_buffer: int = Field(0, ge=0)
    #: add each sample's key as ``__key__``
    with_key: bool = False
    split: str = "train"

    @field_validator("modalities")
    @classmethod
    def _extensions(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        if not value or not all(value.values()):
            raise ValueError("give each modality at least one extension, e.g. "
                             "{image: [jpg, png], text: [txt]}")
        return {m: [e.lower().lstrip(".") for e in exts] for m, exts in value.items()}

    @model_validator(mode="after")
    def _check(self) -> WebDatasetConfig:
        if self.split not in SPLITS:
            raise ValueError(f"unknown split {self.split!r}; splits are {', '.join(SPLITS)}")
        if self.split == "eval" and self.eval_shards is None:
            raise ValueError("the eval split needs eval_shards")
        unknown = sorted(set(self.required or ()) - set(self.modalities))
        if unknown:
            raise ValueError(f"required {unknown} not among modalities {sorted(self.modalities)}")
        return self


def decoders() -> dict[str, Decoder]:
    """Decoders this plugin adds to the core's table (images, txt, json, cls, npy)."""
    return {"wav": decode_wav}


class WebDataset(ShardDataset):
    """A :class:`~mmcore_webdataset.reading.ShardDataset` from a config, with ``split(name)``."""

    splits = SPLITS

    def __init__(self, cfg: WebDatasetConfig) -> None:
        shards = cfg.eval_shards if cfg.split == "eval" else cfg.shards
        assert shards is not None  # the config checks the eval split has shards
        super().__init__(shards, modalities=cfg.modalities, required=cfg.required,
                         decoders=decoders(), raw=cfg.raw, seed=cfg.seed,
                         shuffle_shards=cfg.shuffle_shards and cfg.split == "train",
                         shuffle_buffer=cfg.shuffle_buffer if cfg.split == "train" else 0,
                         with_key=cfg.with_key)
        self.cfg = cfg

    @classmethod
    def from_config(cls, cfg: WebDatasetConfig, ctx: Any = None) -> WebDataset:
        return cls(cfg)

    def split(self, name: str) -> WebDataset:
        """The same dataset, another split (``eval`` reads ``eval_shards`` in order)."""
        return WebDataset(WebDatasetConfig.model_validate(
            {**self.cfg.model_dump(), "split": name}))

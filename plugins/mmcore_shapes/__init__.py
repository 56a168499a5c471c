"""The built-in shapes dataset (no downloads) and the tiny presets that train on it."""

from __future__ import annotations

from pathlib import Path

from mmcore import hookimpl
from mmcore.hookspecs import Register
from mmcore_shapes.dataset import ShapesConfig, ShapesDataset

__version__ = "0.1.0"

SPECS = Path(__file__).resolve().parent / "specs"


@hookimpl
def register_datasets(register: Register) -> None:
    register("shapes", ShapesDataset.from_config, config=ShapesConfig,
             tiny={"image_size": 16, "train_size": 64, "eval_size": 24},
             summary="coloured shapes with captions, drawn on the fly; eval = unseen "
                     "colour-shape combinations")


@hookimpl
def register_presets(register: Register) -> None:
    register("clip-tiny", SPECS / "clip-tiny.yaml",
             summary="tiny CLIP (ViT + text transformer) that trains on the built-in shapes "
                     "data in minutes on a CPU")
    register("clip-tiny-classifier", SPECS / "clip-tiny-classifier.yaml",
             summary="clip-tiny's image tower with a classification head, to fine-tune a "
                     "trained clip-tiny (--init)")
    register("perceiver-tiny", SPECS / "perceiver-tiny.yaml",
             summary="image+text shape classifier with the Perceiver latent array as fusion "
                     "trunk")

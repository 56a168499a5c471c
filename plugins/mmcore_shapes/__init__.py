"""The built-in shapes dataset (no downloads) and the tiny presets that train on it."""

from __future__ import annotations

from mmcore import hookimpl
from mmcore.hookspecs import Register
from mmcore_shapes.dataset import ShapesConfig, ShapesDataset

__version__ = "0.1.0"


@hookimpl
def register_datasets(register: Register) -> None:
    register("shapes", ShapesDataset.from_config, config=ShapesConfig,
             tiny={"image_size": 16, "train_size": 64, "eval_size": 24},
             summary="coloured shapes with captions, drawn on the fly; eval = unseen "
                     "colour-shape combinations")

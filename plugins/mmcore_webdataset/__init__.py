"""Datasets streamed from tar shards in the webdataset layout (see :mod:`mmcore.shards`)."""

from __future__ import annotations

from mmcore import hookimpl
from mmcore.hookspecs import Register
from mmcore_webdataset.dataset import WebDataset, WebDatasetConfig

__version__ = "0.1.0"


@hookimpl
def register_datasets(register: Register) -> None:
    register("webdataset", WebDataset.from_config, config=WebDatasetConfig,
             summary="samples streamed from tar shards (img2dataset layout: 0001.jpg, "
                     "0001.txt, ...), split by rank and worker, shuffled per epoch")

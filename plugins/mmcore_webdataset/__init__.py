"""Tar shards in the webdataset layout: the ``webdataset`` dataset streams them
(:mod:`mmcore_webdataset.reading`), ``mmcore shards`` writes and inspects them
(:mod:`mmcore_webdataset.writing`, :mod:`mmcore_webdataset.cli`)."""

from __future__ import annotations

from mmcore import hookimpl
from mmcore.hookspecs import Register
from mmcore_webdataset import cli
from mmcore_webdataset.dataset import WebDataset, WebDatasetConfig

__version__ = "0.1.0"


@hookimpl
def register_datasets(register: Register) -> None:
    register("webdataset", WebDataset.from_config, config=WebDatasetConfig,
             summary="samples streamed from tar shards (img2dataset layout: 0001.jpg, "
                     "0001.txt, ...), split by rank and worker, shuffled per epoch")


@hookimpl
def register_commands(register: Register) -> None:
    register("shards", cli.add_arguments, cli.run, summary=cli.SUMMARY)

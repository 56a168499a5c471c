"""Metric loggers: callbacks that write the metric rows somewhere. They run on rank 0 only.

Built in: ``jsonl`` (``metrics.jsonl``, one JSON row per log step; what a resume continues
from), ``csv`` (``metrics.csv``), ``png`` (``loss.png``) and ``tensorboard``
(``tensorboard/``, needs the ``tensorboard`` package). Plugins add more through the
``register_loggers`` hook (``mmcore_loggers``: ``wandb`` and ``mlflow`` when those packages
are installed); ``register(name, factory, requires="package")`` where ``factory()`` returns
a :class:`~mmcore.training.callbacks.Callback`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmcore.checkpoint import write_text
from mmcore.train_spec import BUILTIN_LOGGERS
from mmcore.training.callbacks import Callback
from mmcore.training.metrics import METRICS, metrics_csv

if TYPE_CHECKING:
    from mmcore.registry import Registry
    from mmcore.train_spec import TrainSpec
    from mmcore.training.state import Run

#: the key prefix of evaluation metrics in a row
EVAL_PREFIX = "eval/"


class JsonlLogger(Callback):
    """Appends each row to ``metrics.jsonl``."""

    def on_log(self, run: Run, row: Mapping[str, Any]) -> None:
        run.out_dir.mkdir(parents=True, exist_ok=True)
        with (run.out_dir / METRICS).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(dict(row)) + "\n")


class CsvLogger(Callback):
    """Rewrites ``metrics.csv`` from every row so far at each checkpoint and at the end."""

    def _write(self, run: Run) -> None:
        write_text(run.out_dir / "metrics.csv", metrics_csv(run.metrics))

    def on_checkpoint(self, run: Run, path: Path) -> None:
        self._write(run)

    def on_train_end(self, run: Run) -> None:
        self._write(run)


class PngLogger(Callback):
    """Draws ``loss.png`` (the training loss and its smoothed curve) at each checkpoint and
    at the end; a plot that cannot be written is a warning, never a stop."""

    def _write(self, run: Run) -> None:
        from mmcore.plot import plot_loss

        if not run.metrics:
            return
        try:
            plot_loss(run.metrics, run.out_dir / "loss.png", title=f"{run.spec.name}: loss")
        except OSError as exc:
            warnings.warn(f"could not draw loss.png: {exc}", stacklevel=2)

    def on_checkpoint(self, run: Run, path: Path) -> None:
        self._write(run)

    def on_train_end(self, run: Run) -> None:
        self._write(run)


class TensorBoardLogger(Callback):
    """Scalars into ``tensorboard/``: ``train/<key>`` for train rows, ``eval/<metric>`` as
    named. Without the ``tensorboard`` package: a warning, and nothing is written."""

    def __init__(self) -> None:
        self.writer: Any = None

    def on_train_start(self, run: Run) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            warnings.warn("the tensorboard logger is on but the tensorboard package is not "
                          "installed (pip install tensorboard); metrics go to the other "
                          "loggers only", stacklevel=2)
            return
        self.writer = SummaryWriter(log_dir=str(run.out_dir / "tensorboard"))

    def on_log(self, run: Run, row: Mapping[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            if key != "step" and isinstance(value, int | float):
                tag = key if key.startswith(EVAL_PREFIX) else f"train/{key}"
                self.writer.add_scalar(tag, value, row["step"])
        self.writer.flush()

    def on_train_end(self, run: Run) -> None:
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


BUILTIN: dict[str, Callable[[], Callback]] = dict(zip(
    BUILTIN_LOGGERS, (JsonlLogger, CsvLogger, PngLogger, TensorBoardLogger), strict=True))


def logger_names(registry: Registry | None = None) -> list[str]:
    """Every logger name usable in ``train.loggers``: built in, then registered."""
    return [*BUILTIN, *_registry(registry).names("logger")]


def make_loggers(cfg: TrainSpec, registry: Registry | None = None) -> list[Any]:
    """The loggers ``cfg`` names (:meth:`~mmcore.train_spec.TrainSpec.logger_names`).
    A registered name whose package is missing is a RegistryError saying what to install."""
    out: list[Any] = []
    for name in cfg.logger_names():
        factory = BUILTIN.get(name)
        out.append(factory() if factory is not None
                   else _registry(registry).get("logger", name).factory())
    return out


def _registry(registry: Registry | None) -> Registry:
    if registry is not None:
        return registry
    from mmcore.plugins import get_registry

    return get_registry()

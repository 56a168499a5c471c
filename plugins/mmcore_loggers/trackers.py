"""The ``wandb`` and ``mlflow`` loggers: callbacks that forward each metric row."""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mmcore.training.callbacks import Callback

if TYPE_CHECKING:
    from mmcore.training.state import Run


def numeric(row: Mapping[str, Any]) -> dict[str, float]:
    """The row's numbers, ``step`` left out (it is the x axis)."""
    return {k: float(v) for k, v in row.items()
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)}


class WandbLogger(Callback):
    """Logs each row to a Weights & Biases run started at train start."""

    def __init__(self) -> None:
        self.run: Any = None

    def on_train_start(self, run: Run) -> None:
        wandb = importlib.import_module("wandb")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", run.spec.name),
                              config=run.spec.to_dict(), dir=str(run.out_dir),
                              resume="allow")

    def on_log(self, run: Run, row: Mapping[str, Any]) -> None:
        if self.run is not None:
            self.run.log(numeric(row), step=int(row["step"]))

    def on_train_end(self, run: Run) -> None:
        self.close()

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


class MLflowLogger(Callback):
    """Logs each row to an MLflow run started at train start."""

    def __init__(self) -> None:
        self.mlflow: Any = None

    def on_train_start(self, run: Run) -> None:
        self.mlflow = importlib.import_module("mlflow")
        self.mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", run.spec.name))
        self.mlflow.start_run(run_name=run.out_dir.name)
        self.mlflow.log_dict(run.spec.to_dict(), "spec.json")

    def on_log(self, run: Run, row: Mapping[str, Any]) -> None:
        if self.mlflow is not None:
            self.mlflow.log_metrics(numeric(row), step=int(row["step"]))

    def on_train_end(self, run: Run) -> None:
        self.close()

    def close(self) -> None:
        if self.mlflow is not None:
            self.mlflow.end_run()
            self.mlflow = None

"""Metric loggers for hosted trackers: Weights & Biases (``wandb``) and MLflow (``mlflow``).

Each is registered only when its package is installed; naming a missing one in
``train.loggers`` is an error saying what to install. Both import their package when the
run starts, never at plugin load, and run on rank 0 only (as every logger does).
"""

from __future__ import annotations

from typing import Any

from mmcore import hookimpl
from mmcore.hookspecs import Register

__version__ = "0.1.0"


def _wandb() -> Any:
    """A Weights & Biases logger (imports the trainer only when a run asks for it)."""
    from mmcore_loggers.trackers import WandbLogger

    return WandbLogger()


def _mlflow() -> Any:
    """An MLflow logger."""
    from mmcore_loggers.trackers import MLflowLogger

    return MLflowLogger()


@hookimpl
def register_loggers(register: Register) -> None:
    register("wandb", _wandb, requires="wandb",
             summary="Weights & Biases: one wandb run per training run (project: "
                     "$WANDB_PROJECT or the spec's name), the spec as its config")
    register("mlflow", _mlflow, requires="mlflow",
             summary="MLflow: one MLflow run per training run ($MLFLOW_TRACKING_URI, "
                     "experiment: $MLFLOW_EXPERIMENT_NAME or the spec's name)")

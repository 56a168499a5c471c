"""The state of one training invocation on this rank, and the trainer's error."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from mmcore.errors import MMCoreError
from mmcore.training.schedule import lr_factor

if TYPE_CHECKING:
    from mmcore.data import TrainData
    from mmcore.parallel import Parallel
    from mmcore.spec import ModelSpec, TrainSpec


class TrainingError(MMCoreError):
    """Training cannot go on: a non-finite loss or gradient, or an unusable run folder."""


@dataclass
class Run:
    """Everything one training invocation works with (on this rank)."""

    spec: ModelSpec
    out_dir: Path
    model: Any  # MultimodalModel
    parallel: Parallel
    optimizer: torch.optim.Optimizer
    dataset: TrainData
    total: int
    device: str = "cpu"
    scaler: torch.amp.GradScaler | None = None
    steps_per_epoch: int | None = None  # streaming data only
    step: int = 0
    saved_step: int = -1  # the step of the newest checkpoint written or resumed from
    skipped: int = 0  # updates skipped for a non-finite loss or gradient
    epoch: int = 0  # streaming data: the epoch being read and the steps made in it
    epoch_step: int = 0
    elapsed: float = 0.0
    metrics: list[dict[str, Any]] = field(default_factory=list)
    writer: Any = None  # unused: TensorBoard is a logger (mmcore.training.loggers)
    #: set by a callback (or early stopping) to end the run after this step, as if it
    #: had reached its last step (the final model is saved)
    should_stop: bool = False
    stop_reason: str | None = None
    #: what periodic evaluation keeps across a resume: ``best`` (keep_best's metric, value,
    #: step) and ``early`` (early stopping's best value and evaluations without gain)
    eval_state: dict[str, Any] = field(default_factory=dict)
    eval_data: Any = None  # the evaluation split, when train.eval_every is set
    callbacks: Any = None  # a mmcore.training.callbacks.Callbacks

    @property
    def cfg(self) -> TrainSpec:
        return self.spec.train

    def lr(self, step: int) -> float:
        """The learning rate of the update that makes step ``step + 1``."""
        cfg = self.cfg
        return cfg.lr * lr_factor(step, total=self.total, warmup=cfg.warmup_steps,
                                  min_ratio=cfg.min_lr_ratio, kind=cfg.schedule,
                                  decay_fraction=cfg.decay_fraction)

    def stop(self, reason: str) -> None:
        """End the run after the current step (callbacks call this, or set
        ``should_stop``)."""
        self.should_stop, self.stop_reason = True, reason

    def epoch_progress(self) -> float:
        """Epochs done, as a fraction."""
        if self.steps_per_epoch is not None:
            return self.epoch + self.epoch_step / self.steps_per_epoch
        return self.step * self.cfg.batch_size / len(cast(Any, self.dataset))

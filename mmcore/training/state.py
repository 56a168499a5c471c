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
    optimizer: torch.optim.AdamW
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
    writer: Any = None  # a TensorBoard SummaryWriter on rank 0, when asked for

    @property
    def cfg(self) -> TrainSpec:
        return self.spec.train

    def lr(self, step: int) -> float:
        """The learning rate of the update that makes step ``step + 1``."""
        return self.cfg.lr * lr_factor(step, total=self.total, warmup=self.cfg.warmup_steps,
                                       min_ratio=self.cfg.min_lr_ratio)

    def epoch_progress(self) -> float:
        """Epochs done, as a fraction."""
        if self.steps_per_epoch is not None:
            return self.epoch + self.epoch_step / self.steps_per_epoch
        return self.step * self.cfg.batch_size / len(cast(Any, self.dataset))

"""Train a model from its spec: AdamW/SGD/Adafactor, warmup + cosine/linear/constant/WSD,
learning rates per component, LoRA, clipping, periodic evaluation, callbacks and loggers,
resumable checkpoints,
in one process or many (``torchrun ... -m mmcore train``: DDP or FSDP2, see
:mod:`mmcore.parallel`). One job per module:

- :mod:`~mmcore.training.state` the run state; :mod:`~mmcore.training.schedule` the lr;
- :mod:`~mmcore.training.optim` AdamW and its state; :mod:`~mmcore.training.rng` seeding;
- :mod:`~mmcore.training.data` batches per step; :mod:`~mmcore.training.parts` freezing
  and activation checkpointing;
- :mod:`~mmcore.training.setup` opening a run; :mod:`~mmcore.training.step` one update;
  :mod:`~mmcore.training.loop` ``train()``;
- :mod:`~mmcore.training.metrics` metric rows; :mod:`~mmcore.training.callbacks` the
  callback interface; :mod:`~mmcore.training.loggers` loggers (jsonl, csv, png,
  tensorboard; plugins add more); :mod:`~mmcore.training.evaluation` evaluation during
  training, keep_best and early stopping;
  :mod:`~mmcore.training.checkpoints` training checkpoints.

A run folder holds::

    spec.yaml  metrics.jsonl  metrics.csv  loss.png  model.safetensors (final)  [tensorboard/]
    checkpoints/step-000200/  model.safetensors  optimizer.safetensors  state.json  COMPLETE
    [best/ (keep_best: a checkpoint folder)]  [base.safetensors (LoRA: the frozen base)]

(the layout is :mod:`mmcore.checkpoint`'s). ``resume`` takes the newest folder with
``COMPLETE`` and ignores any other. On CPU, N steps in one go give bitwise the same
parameters as N/2 steps, a resume and N/2 more.

With several ranks, rank 0 alone writes files and draws the progress bar; every rank's
RNG state goes into ``state.json`` (``rng_ranks``) and each rank restores its own. The
checkpoint folder must be visible to every rank on resume (a shared file system).
``batch_size`` is the batch of one optimizer step over all ranks and micro-batches.
Streaming data resumes at an epoch boundary (see :mod:`mmcore.training.data`): checkpoint
at multiples of ``steps_per_epoch`` to resume exactly.
"""

from __future__ import annotations

from mmcore.checkpoint import COMPLETE, checkpoint_dir, latest_checkpoint, list_checkpoints
from mmcore.training.callbacks import Callback
from mmcore.training.checkpoints import STATE_FORMAT, save_checkpoint
from mmcore.training.data import available_cores, cpu_threads
from mmcore.training.loop import CRASH_ENV, train
from mmcore.training.metrics import metrics_csv, read_metrics
from mmcore.training.optim import (
    load_optimizer_state,
    make_optimizer,
    optimizer_state,
    param_groups,
)
from mmcore.training.parts import checkpoint_encoders, freeze
from mmcore.training.rng import rank_seed, rng_state, seed_everything, set_rng_state
from mmcore.training.schedule import lr_factor
from mmcore.training.setup import make_run
from mmcore.training.state import Run, TrainingError
from mmcore.training.step import train_step

__all__ = [
    "COMPLETE",
    "Callback",
    "CRASH_ENV",
    "STATE_FORMAT",
    "Run",
    "TrainingError",
    "available_cores",
    "checkpoint_dir",
    "checkpoint_encoders",
    "cpu_threads",
    "freeze",
    "latest_checkpoint",
    "list_checkpoints",
    "load_optimizer_state",
    "lr_factor",
    "make_optimizer",
    "make_run",
    "metrics_csv",
    "optimizer_state",
    "param_groups",
    "rank_seed",
    "read_metrics",
    "rng_state",
    "save_checkpoint",
    "seed_everything",
    "set_rng_state",
    "train",
    "train_step",
]

"""The ``train:`` section of a spec: optimisation, schedule, LoRA, evaluation and logging.

Re-exported by :mod:`mmcore.spec`; kept apart so that the spec module stays short. Checks
that need the rest of the spec (component paths, warmup against steps, logger names) are
:mod:`mmcore.validation`'s.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: an Adam beta: a decay rate in [0, 1)
_Beta = Annotated[float, Field(ge=0, lt=1)]

Optimizer = Literal["adamw", "sgd", "adafactor"]
Schedule = Literal["cosine", "linear", "constant", "wsd"]
Mode = Literal["auto", "max", "min"]
#: the loggers mmcore itself provides (:mod:`mmcore.training.loggers`)
BUILTIN_LOGGERS: tuple[str, ...] = ("jsonl", "csv", "png", "tensorboard")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoraTarget(_Strict):
    """Which ``nn.Linear`` layers get adapters: those inside the component at ``path``
    (a ``ModelSpec.module_paths()`` entry) whose module name matches the glob ``modules``
    (names relative to that component, e.g. ``layers.0.attn.qkv``)."""

    path: str
    modules: str = "*"


class LoraSpec(_Strict):
    """Low-rank adapters: ``W x + (alpha / rank) * B A dropout(x)``; only A and B train."""

    targets: list[LoraTarget] = Field(min_length=1)
    rank: int = Field(8, gt=0)
    alpha: float = Field(16.0, gt=0, allow_inf_nan=False)
    dropout: float = Field(0.0, ge=0, lt=1)


class EarlyStoppingSpec(_Strict):
    """Stop when ``metric`` (an ``eval/`` metric) has not improved by more than
    ``min_delta`` for ``patience`` evaluations in a row."""

    metric: str
    patience: int = Field(3, gt=0)
    #: max, min, or auto (min for names containing ``loss``, max otherwise)
    mode: Mode = "auto"
    min_delta: float = Field(0.0, ge=0, allow_inf_nan=False)


class TrainSpec(_Strict):
    """Optimisation settings for ``mmcore train``."""

    steps: int = Field(1000, gt=0)
    batch_size: int = Field(64, gt=0)
    lr: float = Field(1e-3, gt=0, allow_inf_nan=False)
    weight_decay: float = Field(0.1, ge=0, allow_inf_nan=False)
    betas: tuple[_Beta, _Beta] = (0.9, 0.98)
    #: adamw (default), sgd (with ``momentum``) or adafactor (torch's)
    optimizer: Optimizer = "adamw"
    #: sgd's momentum
    momentum: float = Field(0.9, ge=0, lt=1)
    #: cosine (default), linear, constant, or wsd (warmup, flat, then linear decay over
    #: the last ``decay_fraction`` of the steps); all after ``warmup_steps``
    schedule: Schedule = "cosine"
    decay_fraction: float = Field(0.2, gt=0, le=1)
    #: learning rate per component path (``ModelSpec.module_paths()``), e.g.
    #: ``{modalities.image: 1e-5}``; the most specific path wins, ``lr`` elsewhere
    lr_by_component: dict[str, Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(
        default_factory=dict)
    #: must not exceed ``steps`` when given (checked by :mod:`mmcore.validation`)
    warmup_steps: int = Field(50, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    grad_clip: float | None = Field(1.0, gt=0, allow_inf_nan=False)
    log_every: int = Field(10, gt=0)
    checkpoint_every: int = Field(200, gt=0)
    seed: int = Field(0, ge=0)
    num_workers: int = Field(0, ge=0)
    #: under torchrun: ddp, fsdp (FSDP2 fully_shard) or auto (ddp); one process ignores it
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    #: micro-batches per optimizer step; ``batch_size`` is the whole step's batch (all ranks
    #: and micro-batches together), so it must divide by world size x grad_accum_steps
    grad_accum_steps: int = Field(1, gt=0)
    #: fp32, or autocast to bf16 / fp16 (fp16 with a gradient scaler); weights stay fp32
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    #: recompute encoder activations in backward: true (every encoder) or modality names
    activation_checkpointing: bool | list[str] = False
    #: parts left untrained, e.g. ``modalities.text``, ``modalities.image.encoder``,
    #: ``fusion``, ``heads.cls``, ``objectives.contrastive``
    freeze: list[str] = Field(default_factory=list)
    #: LoRA adapters; with them only the adapters train
    lora: LoraSpec | None = None
    #: a non-finite loss or gradient: stop with an error, or skip the update and count it
    nonfinite: Literal["stop", "skip"] = "stop"
    #: with ``nonfinite: skip``, stop once more steps than this were skipped
    max_skipped_steps: int = Field(10, ge=0)
    #: metric loggers: built in jsonl, csv, png, tensorboard; plugins add more (wandb,
    #: mlflow when installed). ``metrics.jsonl`` is what a resume continues from.
    loggers: list[str] = Field(default_factory=lambda: ["jsonl", "csv", "png"])
    #: also write TensorBoard event files (needs the ``tensorboard`` package); the same as
    #: naming ``tensorboard`` in ``loggers``
    tensorboard: bool = False
    #: evaluate every N steps (and at the end) on the data's ``eval_split``
    eval_every: int | None = Field(None, gt=0)
    eval_split: str = "eval"
    #: evaluate on at most this many items (default: all)
    eval_limit: int | None = Field(None, gt=0)
    eval_batch_size: int = Field(64, gt=0)
    #: keep a copy of the checkpoint with the best value of this eval metric in ``best/``
    keep_best: str | None = None
    keep_best_mode: Mode = "auto"
    early_stopping: EarlyStoppingSpec | None = None
    #: streaming (iterable) data: optimizer steps per epoch, the same on every rank;
    #: default: the dataset's known sample count // batch_size
    steps_per_epoch: int | None = Field(None, gt=0)
    #: DDP: tolerate parameters unused in a step (a modality absent from a batch)
    find_unused_parameters: bool = True
    #: torch.compile the transformer stacks (falls back to eager, with a warning, where
    #: torch.compile cannot run)
    compile: bool = False

    @model_validator(mode="after")
    def _micro_batches(self) -> TrainSpec:
        if self.batch_size % self.grad_accum_steps:
            raise ValueError(f"batch_size {self.batch_size} does not divide into "
                             f"grad_accum_steps {self.grad_accum_steps} micro-batches")
        return self

    def logger_names(self) -> list[str]:
        """``loggers`` plus ``tensorboard`` when that flag is on, each once."""
        names = list(dict.fromkeys(self.loggers))
        if self.tensorboard and "tensorboard" not in names:
            names.append("tensorboard")
        return names

"""Callbacks: code a programmatic user hands to ``train(..., callbacks=[...])``.

Each hook receives the :class:`~mmcore.training.state.Run`, which gives read access to the
run: ``run.step``, ``run.total``, ``run.metrics`` (the metric rows so far), ``run.model``,
``run.spec``, ``run.out_dir``. A hook stops the run by calling ``run.stop("why")`` (or
setting ``run.should_stop = True``): training ends after the current step, a checkpoint
and the final model are written, and ``on_train_end`` runs, as at the last step.

Hooks, in the order they fire::

    on_train_start(run)                      once, after the run is opened (or resumed)
    on_step_end(run, terms)                  after each optimizer step (loss, lr, ...)
    on_log(run, row)                         each metric row (train rows, eval rows)
    on_eval_end(run, metrics)                after each periodic evaluation (eval/...)
    on_checkpoint(run, path)                 after a checkpoint folder is complete
    on_train_end(run)                        once, at the end (also after a stop)

``close()`` is called on every callback when training fails, so a logger can release its
files. Loggers (:mod:`mmcore.training.loggers`) are callbacks that run on rank 0 only;
user callbacks run on every rank (their stop requests are combined across ranks).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mmcore.distributed import world_size

if TYPE_CHECKING:
    from mmcore.training.state import Run

HOOKS: tuple[str, ...] = ("on_train_start", "on_step_end", "on_log", "on_eval_end",
                          "on_checkpoint", "on_train_end")


class Callback:
    """Base class with every hook doing nothing: override the ones you need."""

    def on_train_start(self, run: Run) -> None:
        """The run is open: fresh (``run.step == 0``) or resumed."""

    def on_step_end(self, run: Run, terms: Mapping[str, float]) -> None:
        """Step ``run.step`` is done; ``terms``: its loss terms, ``lr``, ``grad_norm``."""

    def on_log(self, run: Run, row: Mapping[str, Any]) -> None:
        """A metric row (``step`` and means since the last row, or ``eval/...`` values)."""

    def on_eval_end(self, run: Run, metrics: Mapping[str, float]) -> None:
        """An evaluation at ``run.step`` finished: ``eval/...`` metrics."""

    def on_checkpoint(self, run: Run, path: Path) -> None:
        """A complete checkpoint folder was written at ``path``."""

    def on_train_end(self, run: Run) -> None:
        """Training ended (the last step, a stop, or ``stop_after``)."""

    def close(self) -> None:
        """Training failed: release what the callback holds."""


class Callbacks:
    """Calls each hook on every callback, in order."""

    def __init__(self, callbacks: Iterable[Any] = ()) -> None:
        self.callbacks = list(callbacks)

    def fire(self, hook: str, run: Run, *args: Any) -> None:
        """Call ``hook(run, *args)`` on every callback that defines it."""
        if hook not in HOOKS:
            raise ValueError(f"unknown callback hook {hook!r}; hooks are {', '.join(HOOKS)}")
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if method is not None:
                method(run, *args)

    def close(self) -> None:
        """Call ``close()`` on every callback that has one, even if one of them raises."""
        errors: list[BaseException] = []
        for callback in self.callbacks:
            try:
                getattr(callback, "close", lambda: None)()
            except Exception as exc:  # every callback gets its close
                errors.append(exc)
        if errors:
            raise errors[0]


def agree_to_stop(run: Run) -> bool:
    """Whether any rank's callbacks asked to stop; every rank gets the same answer."""
    if world_size() == 1:
        return run.should_stop
    import torch.distributed as dist

    flag = torch.tensor([1.0 if run.should_stop else 0.0], device=run.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item() > 0 and not run.should_stop:
        run.stop("another rank asked to stop")
    return run.should_stop

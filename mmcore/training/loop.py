"""``train()``: open the run, loop over the steps (callbacks and loggers, evaluation,
checkpoints), and save the final model."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmcore import validation
from mmcore.checkpoint import MODEL_FILE, checkpoint_dir
from mmcore.data import Dataset, TrainData
from mmcore.distributed import barrier, is_main, rank
from mmcore.parallel import init_distributed, restart_count, shutdown_distributed
from mmcore.progress import Progress
from mmcore.spec import ModelSpec
from mmcore.training.callbacks import Callbacks, agree_to_stop
from mmcore.training.checkpoints import save_best, save_checkpoint, save_model, write_lora_base
from mmcore.training.data import advance_epoch, cpu_threads, step_batches
from mmcore.training.evaluation import (
    due,
    evaluate_run,
    open_eval_data,
    track_best,
    track_early_stopping,
)
from mmcore.training.init import with_init
from mmcore.training.loggers import make_loggers
from mmcore.training.metrics import Window, log_row, write_spec
from mmcore.training.setup import open_run
from mmcore.training.state import Run
from mmcore.training.step import train_step

#: tests only: ``"RANK:STEP"`` makes that rank exit hard (``os._exit``) before that step,
#: once per run folder (a marker file remembers it), to exercise torchrun restarts
CRASH_ENV = "MMCORE_TEST_CRASH_AT"


def train(spec: ModelSpec, out_dir: str | Path, *, resume: bool = False,
          steps: int | None = None, progress: bool = True, device: str = "cpu",
          dataset: TrainData | None = None, stop_after: int | None = None,
          overwrite: bool = False, callbacks: Sequence[Any] = (),
          eval_dataset: Dataset | None = None, init: Any = None, model: Any = None) -> Path:
    """Train ``spec`` into ``out_dir``; returns the final ``model.safetensors``.

    ``steps`` overrides ``spec.train.steps`` (the schedule's length). ``resume`` continues
    from the newest complete checkpoint (starting fresh when there is none), keeping the
    schedule length saved there unless ``steps`` is given. ``dataset``
    replaces the spec's ``data:`` (train split), ``eval_dataset`` its evaluation split
    (``train.eval_every``). ``stop_after`` stops at that step with a
    checkpoint, as an interruption would; the return value is then that checkpoint's model.
    ``overwrite`` deletes an earlier run's checkpoints and metrics in ``out_dir``.
    ``init`` starts from other weights (:func:`mmcore.training.init.with_init`: a source,
    or component path -> source); ``model`` starts from a model already built or loaded.
    ``callbacks``: :class:`~mmcore.training.callbacks.Callback` s, called on every rank
    after the loggers; one that calls ``run.stop()`` ends the run (final model saved).

    Under torchrun every rank calls this; it joins the process group (gloo on CPU, NCCL on
    CUDA) unless the caller already did. A worker group torchrun restarted resumes.
    """
    spec = with_init(spec, init)
    validation.check(spec, data=dataset is None, dataset=dataset)  # first item, size
    if restart_count() > 0:  # torchrun --max-restarts brought us back after a failure
        resume, overwrite = True, False
    device, joined = init_distributed(device)
    try:
        run = open_run(spec, Path(out_dir), resume=resume, steps=steps, device=device,
                       dataset=dataset, overwrite=overwrite, model=model)
        return _train(run, progress=progress, stop_after=stop_after, callbacks=callbacks,
                      eval_dataset=eval_dataset)
    finally:
        shutdown_distributed(joined)


def _train(run: Run, *, progress: bool, stop_after: int | None, callbacks: Sequence[Any],
           eval_dataset: Dataset | None) -> Path:
    loggers = make_loggers(run.cfg) if is_main() else []
    run.callbacks = Callbacks([*loggers, *callbacks])
    if run.cfg.eval_every is not None:
        run.eval_data = open_eval_data(run, eval_dataset)
    try:
        return _run(run, progress, stop_after)
    except BaseException:
        run.callbacks.close()
        raise


def _run(run: Run, progress: bool, stop_after: int | None) -> Path:
    stop = run.total if stop_after is None else min(stop_after, run.total)
    if is_main():
        write_spec(run)
    if run.cfg.lora is not None and run.saved_step < 0:  # fresh: the frozen base, once
        write_lora_base(run)
    run.callbacks.fire("on_train_start", run)
    if run.step < stop and not run.should_stop:
        with cpu_threads(run.cfg.num_workers, run.device):
            _loop(run, stop, progress)
    if run.saved_step != run.step:
        _checkpoint(run)
    done = run.step >= run.total or run.should_stop
    path = _save_final(run) if done else checkpoint_dir(run.out_dir, run.step) / MODEL_FILE
    run.callbacks.fire("on_train_end", run)
    return path


def _save_final(run: Run) -> Path:
    path = run.out_dir / MODEL_FILE
    tensors = run.parallel.state_dict()  # a collective under FSDP
    if is_main():
        save_model(run, path, tensors)
    barrier()  # no rank returns before the file exists
    return path


def _checkpoint(run: Run) -> None:
    run.callbacks.fire("on_checkpoint", run, save_checkpoint(run))


def _evaluate(run: Run) -> None:
    """Evaluate, log the ``eval/`` row, keep the best checkpoint, count early stopping."""
    metrics = evaluate_run(run)
    log_row(run, {"step": run.step, **metrics})
    if track_best(run, metrics):
        save_best(run)
    track_early_stopping(run, metrics)
    run.callbacks.fire("on_eval_end", run, metrics)


def _loop(run: Run, stop: int, progress: bool) -> None:
    cfg = run.cfg
    window = Window()
    with Progress(run.total, initial=run.step, desc=run.spec.name,
                  enabled=progress and is_main(), samples_per_unit=cfg.batch_size) as bar:
        for _, batches in zip(range(stop - run.step), step_batches(run), strict=False):
            _maybe_crash(run)
            terms = train_step(run, batches)
            window.add(terms, cfg.batch_size)
            run.step += 1
            advance_epoch(run)
            bar.update(1, loss=window.last("loss"), lr=run.lr(run.step - 1))
            run.callbacks.fire("on_step_end", run, terms)
            agree_to_stop(run)
            if run.step % cfg.log_every == 0 or run.step == stop or run.should_stop:
                log_row(run, window.row(run))
                window = Window()
            if run.eval_data is not None and due(run):
                _evaluate(run)
            if run.should_stop:
                return
            if run.step % cfg.checkpoint_every == 0 and run.step < stop:
                _checkpoint(run)


def _maybe_crash(run: Run) -> None:
    """The test hook of :data:`CRASH_ENV`: exit this rank hard, once per run folder."""
    wanted = os.environ.get(CRASH_ENV)
    if not wanted:
        return
    crash_rank, crash_step = (int(v) for v in wanted.split(":"))
    marker = run.out_dir / f".crashed-rank{crash_rank}"
    if rank() == crash_rank and run.step + 1 == crash_step and not marker.exists():
        marker.write_text(f"{run.step}\n", encoding="utf-8")
        os._exit(17)

"""``train()``: open the run, loop over the steps (logging, checkpointing, reports), and
save the final model."""

from __future__ import annotations

import os
from pathlib import Path

from mmcore import validation
from mmcore.checkpoint import MODEL_FILE, checkpoint_dir, save
from mmcore.data import TrainData
from mmcore.distributed import barrier, is_main, rank
from mmcore.parallel import init_distributed, restart_count, shutdown_distributed
from mmcore.progress import Progress
from mmcore.spec import ModelSpec
from mmcore.training.checkpoints import save_checkpoint
from mmcore.training.data import advance_epoch, cpu_threads, step_batches
from mmcore.training.metrics import Window, log_row, write_reports, write_spec
from mmcore.training.setup import open_run
from mmcore.training.state import Run
from mmcore.training.step import train_step

#: tests only: ``"RANK:STEP"`` makes that rank exit hard (``os._exit``) before that step,
#: once per run folder (a marker file remembers it), to exercise torchrun restarts
CRASH_ENV = "MMCORE_TEST_CRASH_AT"


def train(spec: ModelSpec, out_dir: str | Path, *, resume: bool = False,
          steps: int | None = None, progress: bool = True, device: str = "cpu",
          dataset: TrainData | None = None, stop_after: int | None = None,
          overwrite: bool = False) -> Path:
    """Train ``spec`` into ``out_dir``; returns the final ``model.safetensors``.

    ``steps`` overrides ``spec.train.steps`` (the schedule's length). ``resume`` continues
    from the newest complete checkpoint (starting fresh when there is none), keeping the
    schedule length saved there unless ``steps`` is given. ``dataset``
    replaces the spec's ``data:`` (train split). ``stop_after`` stops at that step with a
    checkpoint, as an interruption would; the return value is then that checkpoint's model.
    ``overwrite`` deletes an earlier run's checkpoints and metrics in ``out_dir``.

    Under torchrun every rank calls this; it joins the process group (gloo on CPU, NCCL on
    CUDA) unless the caller already did. A worker group torchrun restarted resumes.
    """
    validation.check(spec, data=dataset is None)  # the spec's data: its first item's keys
    if restart_count() > 0:  # torchrun --max-restarts brought us back after a failure
        resume, overwrite = True, False
    device, joined = init_distributed(device)
    try:
        return _train(spec, Path(out_dir), resume=resume, steps=steps, progress=progress,
                      device=device, dataset=dataset, stop_after=stop_after,
                      overwrite=overwrite)
    finally:
        shutdown_distributed(joined)


def _train(spec: ModelSpec, out_dir: Path, *, resume: bool, steps: int | None,
           progress: bool, device: str, dataset: TrainData | None, stop_after: int | None,
           overwrite: bool) -> Path:
    run = open_run(spec, out_dir, resume=resume, steps=steps, device=device,
                   dataset=dataset, overwrite=overwrite)
    try:
        stop = run.total if stop_after is None else min(stop_after, run.total)
        if is_main():
            write_spec(run)
        if run.step < stop:
            with cpu_threads(spec.train.num_workers, device):
                _loop(run, stop, progress)
        if run.saved_step != run.step:
            save_checkpoint(run)
        if is_main():
            write_reports(run)
        if run.step < run.total:
            return checkpoint_dir(out_dir, run.step) / MODEL_FILE
        return _save_final(run)
    finally:
        if run.writer is not None:
            run.writer.close()


def _save_final(run: Run) -> Path:
    path = run.out_dir / MODEL_FILE
    tensors = run.parallel.state_dict()  # a collective under FSDP
    if is_main():
        save(run.model, path, extra={"step": str(run.step)}, tensors=tensors)
    barrier()  # no rank returns before the file exists
    return path


def _loop(run: Run, stop: int, progress: bool) -> None:
    cfg = run.cfg
    window = Window()
    with Progress(run.total, initial=run.step, desc=run.spec.name,
                  enabled=progress and is_main(), samples_per_unit=cfg.batch_size) as bar:
        for _, batches in zip(range(stop - run.step), step_batches(run), strict=False):
            _maybe_crash(run)
            window.add(train_step(run, batches), cfg.batch_size)
            run.step += 1
            advance_epoch(run)
            bar.update(1, loss=window.last("loss"), lr=run.lr(run.step - 1))
            if run.step % cfg.log_every == 0 or run.step == stop:
                log_row(run, window.row(run))
                window = Window()
            if run.step % cfg.checkpoint_every == 0 and run.step < stop:
                save_checkpoint(run)
                if is_main():
                    write_reports(run)


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

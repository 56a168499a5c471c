"""Opening a run: a fresh one (seeded, built or given, started from ``init`` weights, parts
frozen) or one resumed from the newest complete checkpoint, wrapped for this world
(DDP/FSDP) with its optimizer and scaler."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from mmcore.checkpoint import (
    CHECKPOINTS,
    INIT_ATTR,
    MODEL_FILE,
    latest_checkpoint,
    list_checkpoints,
    load_state,
)
from mmcore.data import TrainData, spec_train_data
from mmcore.distributed import barrier, is_main, rank, world_size
from mmcore.errors import CheckpointError
from mmcore.parallel import Parallel, resolve_strategy
from mmcore.spec import ModelSpec
from mmcore.training.checkpoints import check_checkpoint_tensors, read_state, restore_run
from mmcore.training.data import steps_per_epoch
from mmcore.training.init import apply_init, read_sources, saved_provenance
from mmcore.training.metrics import METRICS
from mmcore.training.optim import make_optimizer
from mmcore.training.parts import checkpoint_encoders, freeze
from mmcore.training.rng import rank_seed, seed_everything
from mmcore.training.state import Run, TrainingError

#: what ``overwrite`` deletes from an earlier run besides its checkpoints
_RUN_FILES = (METRICS, "metrics.csv", "loss.png", MODEL_FILE, "spec.yaml",
              "base.safetensors")


def open_run(spec: ModelSpec, out_dir: Path, *, resume: bool, steps: int | None,
             device: str, dataset: TrainData | None, overwrite: bool,
             model: Any = None) -> Run:
    """The run to train in ``out_dir``: resumed from its newest complete checkpoint when
    ``resume``, else fresh (an earlier run there is an error unless ``overwrite``).

    A fresh run starts from ``model`` when given (a model already built or loaded), else
    builds ``spec``; then loads ``spec.init`` (:mod:`mmcore.training.init`). All of that
    happens before the run folder is touched, so a bad source leaves it as it was."""
    if is_main():
        _remove_stale_saves(out_dir)
    latest = latest_checkpoint(out_dir)
    barrier()  # every rank has looked before rank 0 may clear the folder
    _refuse_to_overwrite(out_dir, latest, resume=resume, overwrite=overwrite)
    data = dataset if dataset is not None else spec_train_data(spec, "train")
    if latest is not None and resume:
        checkpoint, state = _newest_good(out_dir)
        if checkpoint is None:
            raise TrainingError(f"no checkpoint in {out_dir / CHECKPOINTS} reads back whole; "
                                "the corrupt ones were set aside (*.corrupt-N); start again "
                                "with --overwrite")
        return _resumed_run(spec, out_dir, checkpoint, steps, device, data, model, state)
    fresh = _fresh_model(spec, device, model)
    if overwrite and _artefacts(out_dir):
        if is_main():
            _clear_run(out_dir)
        barrier()
    if is_main():
        (out_dir / METRICS).unlink(missing_ok=True)
    return make_run(spec, out_dir, fresh, data, steps or spec.train.steps, device)


def _artefacts(out_dir: Path) -> list[str]:
    """The names of an earlier run's files and folders in ``out_dir``."""
    names = [*_RUN_FILES, CHECKPOINTS, "best", "tensorboard"]
    return [name for name in names if (out_dir / name).exists()]


def _refuse_to_overwrite(out_dir: Path, latest: Path | None, *, resume: bool,
                         overwrite: bool) -> None:
    """TrainingError when starting would overwrite an earlier run's files: any of them on
    a fresh start, or a finished run's model when there is no checkpoint to resume."""
    if overwrite:
        return
    if latest is not None and not resume:
        raise TrainingError(f"{out_dir} already holds a run (checkpoint {latest.name}): "
                            "continue it with --resume, delete it and start again with "
                            "--overwrite, or choose another --out folder")
    found = _artefacts(out_dir)
    if latest is None and found and (not resume or MODEL_FILE in found):
        raise TrainingError(f"{out_dir} already holds an earlier run's files "
                            f"({', '.join(found)}) and no checkpoint to resume; start again "
                            "there with --overwrite, or choose another --out folder")


def _remove_stale_saves(out_dir: Path) -> None:
    """Delete the temporary folders of checkpoint saves that crashed half-way."""
    for stale in (out_dir / CHECKPOINTS).glob(".tmp-step-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _newest_good(out_dir: Path) -> tuple[Path | None, dict[str, Any]]:
    """The newest complete checkpoint that reads back whole, with its state. A corrupt one
    is set aside (renamed ``step-N.corrupt-K``, never deleted) with a warning, and the
    next newest is tried."""
    for checkpoint in reversed(list_checkpoints(out_dir)):
        try:
            state = read_state(checkpoint)
            check_checkpoint_tensors(checkpoint)
            return checkpoint, state
        except CheckpointError as exc:
            warnings.warn(f"checkpoint {checkpoint} is corrupt ({exc}); setting it aside and "
                          "resuming from the one before", stacklevel=3)
            if is_main():
                _set_aside(checkpoint)
    barrier()
    return None, {}


def _set_aside(checkpoint: Path) -> None:
    for k in range(1, 1000):
        target = checkpoint.with_name(f"{checkpoint.name}.corrupt-{k}")
        if not target.exists():
            checkpoint.rename(target)
            return


def _clear_run(out_dir: Path) -> None:
    shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)
    shutil.rmtree(out_dir / "tensorboard", ignore_errors=True)
    shutil.rmtree(out_dir / "best", ignore_errors=True)
    for name in _RUN_FILES:
        (out_dir / name).unlink(missing_ok=True)


def _prepare_model(spec: ModelSpec, device: str, model: Any = None) -> Any:
    """Build the model (or move the given one to ``device``), freeze the parts
    ``train.freeze`` names and checkpoint the activations of the encoders
    ``train.activation_checkpointing`` names."""
    from mmcore.builder import build

    model = build(spec, device=device) if model is None else model.to(device)
    freeze(model, spec.train.freeze)
    if spec.train.activation_checkpointing:
        checkpoint_encoders(model, spec.train.activation_checkpointing)
    if spec.train.lora is not None:  # LoRA (mmcore.lora): only the adapters train
        from mmcore import lora

        lora.apply(model, spec.train.lora)
    if spec.train.compile:  # in place: parameter names and checkpoints are unchanged
        from mmcore.layers.transformer import compile_stacks

        compile_stacks(model)
    return model


def _fresh_model(spec: ModelSpec, device: str, model: Any) -> Any:
    """Seeded, built (unless given) and loaded with ``spec.init``'s weights."""
    sources = read_sources(spec)  # every source read and checked before anything is built
    seed_everything(spec.train.seed)
    if model is None:
        from mmcore.builder import build

        model = build(spec, device=device)
    if sources:
        apply_init(model, spec, sources, announce=is_main())
    return _prepare_model(spec, device, model)


def make_run(spec: ModelSpec, out_dir: Path, model: Any, dataset: TrainData, total: int,
             device: str) -> Run:
    """Wrap the model for this world (DDP/FSDP), make the optimizer, scaler and writer,
    and seed this rank's RNGs."""
    cfg = spec.train
    world = world_size()
    if cfg.batch_size % (world * cfg.grad_accum_steps):
        raise TrainingError(f"batch_size {cfg.batch_size} (the whole step's batch) does not "
                            f"divide into {world} rank(s) x {cfg.grad_accum_steps} "
                            "micro-batch(es); change batch_size or grad_accum_steps")
    strategy = resolve_strategy(cfg.strategy, world)
    parallel = Parallel(model, strategy=strategy, device=device,
                        find_unused_parameters=cfg.find_unused_parameters)
    scaler = (torch.amp.GradScaler(torch.device(device).type)
              if cfg.precision == "fp16" else None)
    seed_everything(rank_seed(cfg.seed, rank()))
    return Run(spec, out_dir, model, parallel, make_optimizer(model, cfg), dataset,
               total=total, device=device, scaler=scaler,
               steps_per_epoch=steps_per_epoch(cfg, dataset))


def _resumed_run(spec: ModelSpec, out_dir: Path, checkpoint: Path, steps: int | None,
                 device: str, dataset: TrainData, model: Any, state: dict[str, Any]) -> Run:
    model = load_state(_prepare_model(spec, device, model), checkpoint / MODEL_FILE)
    provenance = saved_provenance(checkpoint / MODEL_FILE)
    if provenance:  # later checkpoints keep saying where the first weights came from
        setattr(model, INIT_ATTR, provenance)
    run = make_run(spec, out_dir, model, dataset, steps or int(state["total_steps"]), device)
    restore_run(run, checkpoint, state)
    return run

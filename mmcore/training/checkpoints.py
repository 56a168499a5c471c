"""A training checkpoint: the model, the optimizer and ``state.json`` (step, schedule,
scaler, every rank's RNG, the data position, keep_best / early-stopping state), written
into a hidden temporary folder with ``COMPLETE`` last, then renamed. The folder layout is
:mod:`mmcore.checkpoint`'s; ``best/`` (keep_best) is a checkpoint folder of the same form.

A LoRA run's model files hold the adapters only and reference ``base.safetensors`` (the
frozen base, written once when the run starts) by relative path and sha256."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from mmcore.checkpoint import (
    BASE_KEY,
    COMPLETE,
    MODEL_FILE,
    base_reference,
    checkpoint_dir,
    fsync_dir,
    read_tensors,
    save,
    save_tensors,
    write_text,
)
from mmcore.distributed import barrier, is_main, world_size
from mmcore.errors import CheckpointError
from mmcore.lora import adapter_state, base_state
from mmcore.training.data import data_position, restore_data_position
from mmcore.training.metrics import read_metrics, rewrite_metrics
from mmcore.training.optim import join_optimizer_state, split_optimizer_state
from mmcore.training.rng import gather_rng, restore_rng
from mmcore.training.state import Run, TrainingError

STATE_FORMAT = "mmcore-train/1"
OPTIMIZER_FILE = "optimizer.safetensors"
#: ``train.keep_best``'s copy of the best checkpoint, in the run folder
BEST = "best"
#: a LoRA run's frozen base weights, in the run folder
BASE_FILE = "base.safetensors"


def save_checkpoint(run: Run) -> Path:
    """Write ``checkpoints/step-NNNNNN`` via a temporary folder; ``COMPLETE`` goes last.

    Every rank calls it (it gathers the RNG states, and under FSDP the whole tensors);
    rank 0 writes, and no rank returns before the checkpoint is complete."""
    final = checkpoint_dir(run.out_dir, run.step)
    _save_into(run, final)
    run.saved_step = run.step
    return final


def save_best(run: Run) -> Path:
    """Replace ``best/`` with a checkpoint of this step (``train.keep_best``); the old copy
    is removed only once the new one is complete. Every rank calls it."""
    final = run.out_dir / BEST
    _save_into(run, final)
    return final


def _save_into(run: Run, final: Path) -> None:
    model_tensors = run.parallel.state_dict()
    optimizer = run.parallel.optimizer_state_dict(run.optimizer)
    rngs = gather_rng()
    if is_main():
        _write_checkpoint(run, final, model_tensors, optimizer, rngs)
    barrier()


def save_model(run: Run, path: Path, tensors: Mapping[str, Tensor]) -> None:
    """Write the model file at ``path``. A LoRA run writes its adapters only, with the
    frozen base (``base.safetensors`` in the run folder) referenced by path and sha256."""
    extra = {"step": str(run.step)}
    if run.cfg.lora is not None:
        tensors = adapter_state(dict(tensors))
        extra[BASE_KEY] = json.dumps(base_reference(run.out_dir / BASE_FILE, path.parent))
    save(run.model, path, extra=extra, tensors=tensors)


def write_lora_base(run: Run) -> None:
    """A fresh LoRA run: write the frozen base weights once, as ``base.safetensors``.
    Every rank calls it (a collective under FSDP); rank 0 writes."""
    tensors = base_state(dict(run.parallel.state_dict()))
    if is_main():
        save(run.model, run.out_dir / BASE_FILE, extra={"lora": "base"}, tensors=tensors)
    barrier()


def _write_checkpoint(run: Run, final: Path, model_tensors: Mapping[str, Tensor],
                      optimizer: Mapping[str, Any], rngs: list[dict[str, Any]]) -> None:
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(run, tmp / MODEL_FILE, model_tensors)
    tensors, optimizer_meta = split_optimizer_state(optimizer)
    save_tensors(tensors, tmp / OPTIMIZER_FILE)
    write_text(tmp / "state.json", json.dumps(_train_state(run, optimizer_meta, rngs)))
    write_text(tmp / COMPLETE, f"{run.step}\n")
    old = final.parent / f".old-{final.name}-{os.getpid()}"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def _train_state(run: Run, optimizer_meta: dict[str, Any],
                 rngs: list[dict[str, Any]]) -> dict[str, Any]:
    state: dict[str, Any] = {
        "format": STATE_FORMAT,
        "step": run.step,
        "total_steps": run.total,
        "elapsed_s": run.elapsed,
        "world_size": world_size(),
        "strategy": run.parallel.strategy,
        "scheduler": {"kind": f"warmup-{run.cfg.schedule}", "base_lr": run.cfg.lr,
                      "warmup_steps": run.cfg.warmup_steps, "total_steps": run.total,
                      "min_lr_ratio": run.cfg.min_lr_ratio, "next_lr": run.lr(run.step)},
        "optimizer": optimizer_meta,
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "skipped_steps": run.skipped,
        "rng": rngs[0],
    }
    if run.eval_state:
        state["eval"] = run.eval_state
    if run.should_stop:
        state["stopped"] = run.stop_reason or "stopped by a callback"
    if len(rngs) > 1:
        state["rng_ranks"] = rngs
    state.update(data_position(run))
    return state


#: keys every training checkpoint's state.json holds (what resuming reads without a default)
REQUIRED_STATE = ("step", "total_steps", "optimizer", "rng")


def read_state(checkpoint: Path) -> dict[str, Any]:
    """A checkpoint's ``state.json``, checked to be of :data:`STATE_FORMAT`."""
    try:
        state = json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{checkpoint}/state.json is unreadable: {exc}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{checkpoint}/state.json is not a JSON object")
    if state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{checkpoint} has training state format "
                              f"{state.get('format')!r}, expected {STATE_FORMAT!r}")
    missing = [key for key in REQUIRED_STATE if key not in state]
    if missing:
        raise CheckpointError(f"{checkpoint}/state.json lacks {', '.join(missing)}: it was "
                              "not written by mmcore's trainer, or was edited")
    return state


def check_checkpoint_tensors(checkpoint: Path) -> None:
    """CheckpointError unless the checkpoint's model and optimizer files read back whole
    (headers and data)."""
    for name in (MODEL_FILE, OPTIMIZER_FILE):
        if (checkpoint / name).exists():
            read_tensors(checkpoint / name)


def restore_run(run: Run, checkpoint: Path, state: Mapping[str, Any]) -> None:
    """Bring a freshly made run (its model already loaded) to ``checkpoint``: optimizer,
    scaler, this rank's RNG, step counters, data position and the metric rows so far."""
    _load_optimizer(run, checkpoint, state)
    if run.scaler is not None and state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    restore_rng(state)
    run.step = run.saved_step = int(state["step"])
    run.elapsed = float(state.get("elapsed_s", 0.0))
    run.skipped = int(state.get("skipped_steps", 0))
    run.eval_state = dict(state.get("eval") or {})
    if state.get("stopped"):
        run.stop(str(state["stopped"]))
    restore_data_position(run, state)
    if run.step > run.total:
        raise TrainingError(f"{checkpoint.name} is past the {run.total} steps asked for; "
                            "give more steps or start a new run")
    run.metrics = [r for r in read_metrics(run.out_dir) if r.get("step", 0) <= run.step]
    if is_main():
        rewrite_metrics(run)


def _load_optimizer(run: Run, checkpoint: Path, state: Mapping[str, Any]) -> None:
    joined = join_optimizer_state(read_tensors(checkpoint / OPTIMIZER_FILE),
                                  state["optimizer"])
    try:
        run.parallel.load_optimizer_state_dict(run.optimizer, joined)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"optimizer state does not fit this model: {exc}") from None

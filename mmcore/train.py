"""Train a model from its spec: AdamW, warmup + cosine, clipping, resumable checkpoints,
in one process or many (``torchrun ... -m mmcore train``: DDP or FSDP2, see
:mod:`mmcore.parallel`).

A run folder holds::

    spec.yaml  metrics.jsonl  metrics.csv  loss.png  model.safetensors (final)  [tensorboard/]
    checkpoints/step-000200/  model.safetensors  optimizer.safetensors  state.json  COMPLETE

A checkpoint is written into a hidden temporary folder, ``COMPLETE`` last, then renamed;
``resume`` takes the newest folder with ``COMPLETE`` and ignores any other. On CPU, N
steps in one go give bitwise the same parameters as N/2 steps, a resume and N/2 more.

With several ranks, rank 0 alone writes files and draws the progress bar; every rank's
RNG state goes into ``state.json`` (``rng_ranks``) and each rank restores its own. The
checkpoint folder must be visible to every rank on resume (a shared file system).
``batch_size`` is the batch of one optimizer step over all ranks and micro-batches.

Streaming data (an ``IterableDataset`` such as the ``webdataset`` dataset) has no sampler:
each epoch calls ``set_epoch`` and makes exactly ``steps_per_epoch`` steps on every rank.
Its position is saved as (epoch, step in epoch), and a resume starts at an epoch boundary:
from the middle of epoch e it continues with epoch e + 1 (with a warning), because
fast-forwarding a stream would mean reading and decoding everything skipped. Checkpoint at
multiples of ``steps_per_epoch`` to resume exactly.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import os
import random
import re
import shutil
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from mmcore import validation
from mmcore.checkpoint import atomic_write, load_state, read_tensors, save, save_tensors
from mmcore.data import (
    Collator,
    ResumableSampler,
    StepBatches,
    TrainData,
    is_stream,
    spec_train_data,
)
from mmcore.distributed import barrier, is_main, rank, world_size
from mmcore.errors import CheckpointError, MMCoreError
from mmcore.parallel import (
    Parallel,
    checkpoint_encoders,
    freeze,
    init_distributed,
    resolve_strategy,
    restart_count,
    shutdown_distributed,
)
from mmcore.progress import Progress
from mmcore.spec import ModelSpec, TrainSpec

CHECKPOINTS = "checkpoints"
COMPLETE = "COMPLETE"
STATE_FORMAT = "mmcore-train/1"
_STEP_DIR = re.compile(r"step-(\d+)")
_DECAYED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: tests only: ``"RANK:STEP"`` makes that rank exit hard (``os._exit``) before that step,
#: once per run folder (a marker file remembers it), to exercise torchrun restarts
CRASH_ENV = "MMCORE_TEST_CRASH_AT"
_PRECISION = {"bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingError(MMCoreError):
    """Training cannot go on: a non-finite loss or gradient, or an unusable run folder."""


# --- optimisation -----------------------------------------------------------------------


def lr_factor(step: int, *, total: int, warmup: int, min_ratio: float = 0.0) -> float:
    """LR multiplier for the update that makes step ``step + 1``: linear warmup over
    ``warmup`` updates, then cosine from 1 down to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on Linear/Conv weights only; none on biases, norms, embeddings,
    positions, CLS tokens, latents or the logit scale."""
    decay: list[nn.Parameter] = []
    other: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            wanted = isinstance(module, _DECAYED) and name == "weight"
            (decay if wanted else other).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": other, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def make_optimizer(model: nn.Module, cfg: TrainSpec) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                             betas=cfg.betas, eps=1e-8)


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Optimizer state as (tensors for safetensors, JSON). Nothing is pickled."""
    return split_optimizer_state(optimizer.state_dict())


def split_optimizer_state(state: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """An ``optimizer.state_dict()`` -> (tensors named ``state.<index>.<slot>``, JSON)."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, slots in state["state"].items():
        for key, value in slots.items():
            if isinstance(value, Tensor):
                tensors[f"state.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def join_optimizer_state(tensors: Mapping[str, Tensor], meta: Mapping[str, Any]
                         ) -> dict[str, Any]:
    """Inverse of :func:`split_optimizer_state`: an ``optimizer.state_dict()``."""
    slots: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        slots.setdefault(int(index), {})[key] = value
    for index, values in meta["scalars"].items():
        slots.setdefault(int(index), {}).update(values)
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else dict(g)
              for g in meta["param_groups"]]
    return {"state": slots, "param_groups": groups}


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: Mapping[str, Tensor],
                         meta: Mapping[str, Any]) -> None:
    """Inverse of :func:`optimizer_state`."""
    try:
        optimizer.load_state_dict(join_optimizer_state(tensors, meta))
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"optimizer state does not fit this model: {exc}") from None


# --- RNG state --------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s RNGs (dropout, augmentation): ``seed`` on rank 0, a
    distinct derived seed on every other rank."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def _b64(t: Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) generator states, as JSON."""
    version, internal, gauss = random.getstate()
    numpy_state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    name, keys, pos, has_gauss, cached = numpy_state
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


# --- the run ----------------------------------------------------------------------------


@dataclass
class _Run:
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
        return self.cfg.lr * lr_factor(step, total=self.total, warmup=self.cfg.warmup_steps,
                                       min_ratio=self.cfg.min_lr_ratio)

    def epoch_progress(self) -> float:
        """Epochs done, as a fraction."""
        if self.steps_per_epoch is not None:
            return self.epoch + self.epoch_step / self.steps_per_epoch
        return self.step * self.cfg.batch_size / len(cast(Any, self.dataset))


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
    validation.check(spec)
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
    run = _open_run(spec, out_dir, resume=resume, steps=steps, device=device,
                    dataset=dataset, overwrite=overwrite)
    try:
        stop = run.total if stop_after is None else min(stop_after, run.total)
        if is_main():
            _write_spec(run)
        if run.step < stop:
            with cpu_threads(spec.train.num_workers, device):
                _loop(run, stop, progress)
        if run.saved_step != run.step:
            save_checkpoint(run)
        if is_main():
            _write_reports(run)
        if run.step < run.total:
            return checkpoint_dir(out_dir, run.step) / "model.safetensors"
        return _save_final(run)
    finally:
        if run.writer is not None:
            run.writer.close()


def _save_final(run: _Run) -> Path:
    path = run.out_dir / "model.safetensors"
    tensors = run.parallel.state_dict()  # a collective under FSDP
    if is_main():
        save(run.model, path, extra={"step": str(run.step)}, tensors=tensors)
    barrier()  # no rank returns before the file exists
    return path


def _open_run(spec: ModelSpec, out_dir: Path, *, resume: bool, steps: int | None,
              device: str, dataset: TrainData | None, overwrite: bool) -> _Run:
    latest = latest_checkpoint(out_dir)
    barrier()  # every rank has looked before rank 0 may clear the folder
    if latest is not None and not resume:
        if not overwrite:
            raise TrainingError(f"{out_dir} already holds a run (checkpoint {latest.name}); "
                                "resume it (--resume), overwrite it, or choose another folder")
        if is_main():
            _clear_run(out_dir)
        barrier()
        latest = None
    data = dataset if dataset is not None else spec_train_data(spec, "train")
    if latest is None:
        return _fresh_run(spec, out_dir, steps, device, data)
    return _resumed_run(spec, out_dir, latest, steps, device, data)


def _clear_run(out_dir: Path) -> None:
    shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)
    shutil.rmtree(out_dir / "tensorboard", ignore_errors=True)
    for name in ("metrics.jsonl", "metrics.csv", "loss.png", "model.safetensors", "spec.yaml"):
        (out_dir / name).unlink(missing_ok=True)


def _build(spec: ModelSpec, device: str) -> Any:
    from mmcore.builder import build

    return build(spec, device=device)


def _prepare_model(spec: ModelSpec, device: str) -> Any:
    """Build the model, freeze the parts ``train.freeze`` names and checkpoint the
    activations of the encoders ``train.activation_checkpointing`` names."""
    model = _build(spec, device)
    freeze(model, spec.train.freeze)
    if spec.train.activation_checkpointing:
        checkpoint_encoders(model, spec.train.activation_checkpointing)
    return model


def _fresh_run(spec: ModelSpec, out_dir: Path, steps: int | None, device: str,
               dataset: TrainData) -> _Run:
    seed_everything(spec.train.seed)
    model = _prepare_model(spec, device)
    if is_main():
        (out_dir / "metrics.jsonl").unlink(missing_ok=True)
    return _make_run(spec, out_dir, model, dataset, steps or spec.train.steps, device)


def _make_run(spec: ModelSpec, out_dir: Path, model: Any, dataset: TrainData, total: int,
              device: str) -> _Run:
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
    return _Run(spec, out_dir, model, parallel, make_optimizer(model, cfg), dataset,
                total=total, device=device, scaler=scaler,
                steps_per_epoch=_steps_per_epoch(cfg, dataset),
                writer=_tensorboard(out_dir) if cfg.tensorboard and is_main() else None)


def _steps_per_epoch(cfg: TrainSpec, dataset: TrainData) -> int | None:
    """Streaming data: steps per epoch, equal on every rank (else a rank would wait for
    the others in an all-reduce forever). None for map-style data."""
    if not is_stream(dataset):
        return None
    if cfg.steps_per_epoch is not None:
        return cfg.steps_per_epoch
    samples = getattr(dataset, "num_samples", None)
    if samples is None:
        raise TrainingError("the streaming dataset does not know its size (no index.json "
                            "beside its shards); set train.steps_per_epoch")
    if samples < cfg.batch_size:
        raise TrainingError(f"the stream holds {samples} samples, fewer than one batch of "
                            f"{cfg.batch_size}")
    return int(samples) // cfg.batch_size


def _tensorboard(out_dir: Path) -> Any:
    """A SummaryWriter into ``out_dir/tensorboard``, or None (with a warning) when the
    ``tensorboard`` package is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn("train.tensorboard is on but the tensorboard package is not installed "
                      "(pip install tensorboard); metrics go to metrics.jsonl and metrics.csv "
                      "only", stacklevel=2)
        return None
    return SummaryWriter(log_dir=str(out_dir / "tensorboard"))


def _resumed_run(spec: ModelSpec, out_dir: Path, checkpoint: Path, steps: int | None,
                 device: str, dataset: TrainData) -> _Run:
    state = _read_state(checkpoint)
    if state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{checkpoint} has training state format "
                              f"{state.get('format')!r}, expected {STATE_FORMAT!r}")
    model = load_state(_prepare_model(spec, device), checkpoint / "model.safetensors")
    run = _make_run(spec, out_dir, model, dataset, steps or state["total_steps"], device)
    _load_optimizer(run, checkpoint, state)
    if run.scaler is not None and state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    _restore_rng(state)
    run.step = run.saved_step = int(state["step"])
    run.elapsed = float(state.get("elapsed_s", 0.0))
    run.skipped = int(state.get("skipped_steps", 0))
    _restore_data_position(run, state)
    if run.step > run.total:
        raise TrainingError(f"{checkpoint.name} is past the {run.total} steps asked for; "
                            "give more steps or start a new run")
    run.metrics = [r for r in read_metrics(out_dir) if r.get("step", 0) <= run.step]
    if is_main():
        _rewrite_metrics(run)
    return run


def _load_optimizer(run: _Run, checkpoint: Path, state: Mapping[str, Any]) -> None:
    joined = join_optimizer_state(read_tensors(checkpoint / "optimizer.safetensors"),
                                  state["optimizer"])
    try:
        run.parallel.load_optimizer_state_dict(run.optimizer, joined)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"optimizer state does not fit this model: {exc}") from None


def _restore_rng(state: Mapping[str, Any]) -> None:
    """Restore this rank's RNG state; a rank the checkpoint did not have keeps its fresh
    seed (the run resumes under a larger world)."""
    saved = state.get("rng_ranks") or [state["rng"]]
    if rank() < len(saved):
        set_rng_state(saved[rank()])
    elif rank() == len(saved):  # warn once
        warnings.warn(f"the checkpoint holds RNG states of {len(saved)} rank(s); ranks "
                      f">= {len(saved)} start from fresh seeds", stacklevel=3)


def _restore_data_position(run: _Run, state: Mapping[str, Any]) -> None:
    if run.steps_per_epoch is None:
        if "sampler" not in state:
            raise CheckpointError("the checkpoint was written while training on streaming "
                                  "data; resume with the same data")
        _check_sampler(state["sampler"], len(cast(Any, run.dataset)), run.cfg.batch_size,
                       int(state["step"]))
        return
    data = state.get("data") or {}
    run.epoch, run.epoch_step = int(data.get("epoch", 0)), int(data.get("epoch_step", 0))
    if run.epoch_step:  # a stream resumes at an epoch boundary: the next one
        if is_main():
            warnings.warn(f"streaming data resumes at an epoch boundary: the checkpoint is "
                          f"{run.epoch_step} of {run.steps_per_epoch} steps into epoch "
                          f"{run.epoch}, so the rest of that epoch is skipped and epoch "
                          f"{run.epoch + 1} starts", stacklevel=3)
        run.epoch, run.epoch_step = run.epoch + 1, 0


def _read_state(checkpoint: Path) -> dict[str, Any]:
    try:
        state = json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{checkpoint}/state.json is unreadable: {exc}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{checkpoint}/state.json is not a JSON object")
    return state


def _check_sampler(saved: Mapping[str, int], length: int, batch_size: int, step: int) -> None:
    if int(saved["length"]) != length or int(saved["consumed"]) != step * batch_size:
        raise CheckpointError(
            f"the checkpoint consumed {saved['consumed']} of {saved['length']} samples at step "
            f"{step}; this run has {length} samples and batch size {batch_size}. Resume "
            "with the same data and batch size")


def available_cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@contextmanager
def cpu_threads(num_workers: int, device: str) -> Iterator[None]:
    """On a CPU run with DataLoader workers, cap torch's compute threads at cores - workers
    while training, so the workers get a core each: an oversubscribed core makes every
    multi-threaded op wait. Restored afterwards."""
    before = torch.get_num_threads()
    wanted = max(1, available_cores() - num_workers)
    if torch.device(device).type != "cpu" or num_workers == 0 or wanted >= before:
        yield
        return
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- data ---------------------------------------------------------------------------------


def _micro_batch_size(run: _Run) -> int:
    return run.cfg.batch_size // (world_size() * run.cfg.grad_accum_steps)


def _data_loader(run: _Run, **how: Any) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        run.dataset,  # type: ignore[arg-type]
        collate_fn=Collator.for_model(run.model), num_workers=run.cfg.num_workers,
        # a private generator: creating the loader must not draw from the global RNG
        generator=torch.Generator().manual_seed(rank_seed(run.cfg.seed, rank())),
        pin_memory=torch.device(run.device).type == "cuda", **how)


def _step_batches(run: _Run) -> Iterator[list[dict[str, Any]]]:
    """Per optimizer step, this rank's ``grad_accum_steps`` micro-batches."""
    if run.steps_per_epoch is not None:
        yield from _stream_steps(run)
        return
    cfg = run.cfg
    sampler = ResumableSampler(len(cast(Any, run.dataset)), seed=cfg.seed,
                               start=run.step * cfg.batch_size)
    batches = StepBatches(sampler, batch_size=cfg.batch_size, rank=rank(),
                          world_size=world_size(), micro_batches=cfg.grad_accum_steps)
    micro = iter(_data_loader(run, batch_sampler=batches))
    while True:
        yield [next(micro) for _ in range(cfg.grad_accum_steps)]


def _stream_steps(run: _Run) -> Iterator[list[dict[str, Any]]]:
    """Streaming data, epoch after epoch from ``run.epoch``: ``set_epoch``, then exactly
    ``steps_per_epoch`` steps on every rank. A rank whose share of the shards runs out
    first reads it again (with a warning) rather than make fewer steps than the others."""
    assert run.steps_per_epoch is not None and run.epoch_step == 0
    loader = _data_loader(run, batch_size=_micro_batch_size(run), drop_last=True)
    epoch = run.epoch
    while True:
        setter = getattr(run.dataset, "set_epoch", None)
        if callable(setter):
            setter(epoch)
        micro = _cycle(loader, epoch)
        for _ in range(run.steps_per_epoch):
            yield [next(micro) for _ in range(run.cfg.grad_accum_steps)]
        epoch += 1


def _cycle(loader: torch.utils.data.DataLoader, epoch: int) -> Iterator[dict[str, Any]]:
    passes = 0
    while True:
        count = 0
        for batch in loader:
            count += 1
            yield batch
        if count == 0:
            raise TrainingError(f"rank {rank()} got no batch of epoch {epoch}: its share of "
                                "the stream is smaller than one micro-batch")
        passes += 1
        if passes == 1:
            warnings.warn(f"rank {rank()}: its share of epoch {epoch} ended after {count} "
                          "micro-batches, before steps_per_epoch; reading it again so every "
                          "rank makes the same number of steps", stacklevel=2)


# --- the loop -------------------------------------------------------------------------------


def _loop(run: _Run, stop: int, progress: bool) -> None:
    cfg = run.cfg
    window = _Window()
    with Progress(run.total, initial=run.step, desc=run.spec.name,
                  enabled=progress and is_main(), samples_per_unit=cfg.batch_size) as bar:
        for _, batches in zip(range(stop - run.step), _step_batches(run), strict=False):
            _maybe_crash(run)
            window.add(train_step(run, batches), cfg.batch_size)
            run.step += 1
            _advance_epoch(run)
            bar.update(1, loss=window.last("loss"), lr=run.lr(run.step - 1))
            if run.step % cfg.log_every == 0 or run.step == stop:
                _log(run, window.row(run))
                window = _Window()
            if run.step % cfg.checkpoint_every == 0 and run.step < stop:
                save_checkpoint(run)
                if is_main():
                    _write_reports(run)


def _advance_epoch(run: _Run) -> None:
    if run.steps_per_epoch is None:
        return
    run.epoch_step += 1
    if run.epoch_step == run.steps_per_epoch:
        run.epoch, run.epoch_step = run.epoch + 1, 0


def _maybe_crash(run: _Run) -> None:
    """The test hook of :data:`CRASH_ENV`: exit this rank hard, once per run folder."""
    wanted = os.environ.get(CRASH_ENV)
    if not wanted:
        return
    crash_rank, crash_step = (int(v) for v in wanted.split(":"))
    marker = run.out_dir / f".crashed-rank{crash_rank}"
    if rank() == crash_rank and run.step + 1 == crash_step and not marker.exists():
        marker.write_text(f"{run.step}\n", encoding="utf-8")
        os._exit(17)


def _autocast(run: _Run) -> AbstractContextManager[Any]:
    if run.cfg.precision == "fp32":
        return nullcontext()
    return torch.autocast(torch.device(run.device).type, dtype=_PRECISION[run.cfg.precision])


def train_step(run: _Run, batches: Mapping[str, Any] | Sequence[Mapping[str, Any]]
               ) -> dict[str, float]:
    """One AdamW update at ``run.step`` from one batch or a list of micro-batches (their
    gradients add up, each loss divided by their number); returns the scalar losses
    (``loss`` averaged over ranks, the other terms this rank's), lr and gradient norm.

    A non-finite loss or gradient norm (on any rank) raises TrainingError naming the
    step, or with ``nonfinite: skip`` skips the update and counts it."""
    micro = [batches] if isinstance(batches, Mapping) else list(batches)
    lr = run.lr(run.step)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    run.model.train()
    run.optimizer.zero_grad(set_to_none=True)
    terms = _backward(run, micro)
    loss, finite = _all_ranks(run, terms["loss"])
    terms["loss"] = loss
    if not finite:
        return _skip(run, "loss", loss, lr)
    run.parallel.finish_gradients()
    if run.scaler is not None:
        run.scaler.unscale_(run.optimizer)
    params = [p for g in run.optimizer.param_groups for p in g["params"]]
    clip = run.cfg.grad_clip if run.cfg.grad_clip is not None else float("inf")
    norm = run.parallel.clip(params, clip)
    if run.scaler is not None:  # fp16: an overflow is the scaler's to skip and back off
        run.scaler.step(run.optimizer)
        run.scaler.update()
        terms["loss_scale"] = float(run.scaler.get_scale())
    elif not math.isfinite(norm):
        return _skip(run, "gradient norm", norm, lr)
    else:
        run.optimizer.step()
    return {**terms, "lr": lr, "grad_norm": norm}


def _backward(run: _Run, micro: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Forward and backward over the micro-batches; gradients are reduced across ranks
    after the last one. -> the mean of each scalar term."""
    sums: dict[str, float] = {}
    for i, batch in enumerate(micro):
        run.parallel.check_present(batch)
        with run.parallel.accumulating(sync=i == len(micro) - 1):
            with _autocast(run):
                out = run.parallel.loss(batch)
            loss = out["loss"].float() / len(micro)
            (run.scaler.scale(loss) if run.scaler is not None else loss).backward()
        for key, value in out.items():
            if value.numel() == 1:
                sums[key] = sums.get(key, 0.0) + float(value.detach()) / len(micro)
    return sums


def _all_ranks(run: _Run, loss: float) -> tuple[float, bool]:
    """(the loss averaged over ranks, whether every rank's loss is finite), the same on
    every rank so that all take the same decision. A rank whose own loss was finite
    reports nan when another rank's was not."""
    finite = math.isfinite(loss)
    if world_size() == 1:
        return loss, finite
    both = torch.tensor([loss if finite else 0.0, 0.0 if finite else 1.0],
                        dtype=torch.float64, device=run.device)  # (sum of losses, bad ranks)
    dist.all_reduce(both)
    if both[1] > 0:
        return loss if not finite else float("nan"), False
    return float(both[0]) / world_size(), True


def _skip(run: _Run, what: str, value: float, lr: float) -> dict[str, float]:
    """A non-finite step: stop (``nonfinite: stop``) or drop its update and count it."""
    if run.cfg.nonfinite == "stop":
        raise TrainingError(_nonfinite(run, what, value))
    run.optimizer.zero_grad(set_to_none=True)
    run.skipped += 1
    if run.skipped > run.cfg.max_skipped_steps:
        raise TrainingError(f"{run.skipped} updates skipped for non-finite values, more than "
                            f"max_skipped_steps {run.cfg.max_skipped_steps}; the last: "
                            + _nonfinite(run, what, value))
    if is_main():
        warnings.warn(f"{what} is {value} at step {run.step + 1}; skipped this update "
                      f"({run.skipped} skipped so far)", stacklevel=3)
    return {"lr": lr}


def _nonfinite(run: _Run, what: str, value: float) -> str:
    latest = latest_checkpoint(run.out_dir)
    where = f"; the last good checkpoint is {latest}" if latest else ""
    return (f"{what} is {value} at step {run.step + 1} of {run.total} (spec {run.spec.name!r});"
            f" stopped before updating the weights{where}. Try a lower lr, a warmup, "
            "grad_clip, or check the data")


class _Window:
    """Running means of the step terms between two log rows."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.samples = 0
        self.latest: dict[str, float] = {}
        self.started = time.perf_counter()

    def add(self, terms: Mapping[str, float], samples: int) -> None:
        for key, value in terms.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1
        self.latest = dict(terms)
        self.samples += samples

    def last(self, key: str) -> float:
        return self.latest.get(key, float("nan"))

    def row(self, run: _Run) -> dict[str, Any]:
        seconds = time.perf_counter() - self.started
        run.elapsed += seconds
        means = {k: v / self.counts[k] for k, v in self.sums.items()}
        means["lr"] = self.latest.get("lr", float("nan"))
        row = {"step": run.step, **means,
               "samples_per_s": self.samples / seconds if seconds > 0 else 0.0,
               "epoch": run.epoch_progress(), "elapsed_s": run.elapsed}
        if run.cfg.nonfinite == "skip" or run.skipped:
            row["skipped_steps"] = run.skipped
        return row


# --- checkpoints ------------------------------------------------------------------------


def checkpoint_dir(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / CHECKPOINTS / f"step-{step:06d}"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first; half-written ones are skipped."""
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _STEP_DIR.fullmatch(p.name)) and (p / COMPLETE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder, or None."""
    done = list_checkpoints(out_dir)
    return done[-1] if done else None


def save_checkpoint(run: _Run) -> Path:
    """Write ``checkpoints/step-NNNNNN`` via a temporary folder; ``COMPLETE`` goes last.

    Every rank calls it (it gathers the RNG states, and under FSDP the whole tensors);
    rank 0 writes, and no rank returns before the checkpoint is complete."""
    final = checkpoint_dir(run.out_dir, run.step)
    model_tensors = run.parallel.state_dict()
    optimizer = run.parallel.optimizer_state_dict(run.optimizer)
    rngs = _gather_rng()
    run.saved_step = run.step
    if is_main():
        _write_checkpoint(run, final, model_tensors, optimizer, rngs)
    barrier()
    return final


def _write_checkpoint(run: _Run, final: Path, model_tensors: Mapping[str, Tensor],
                      optimizer: Mapping[str, Any], rngs: list[dict[str, Any]]) -> None:
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save(run.model, tmp / "model.safetensors", extra={"step": str(run.step)},
         tensors=model_tensors)
    tensors, optimizer_meta = split_optimizer_state(optimizer)
    save_tensors(tensors, tmp / "optimizer.safetensors")
    _write_text(tmp / "state.json", json.dumps(_train_state(run, optimizer_meta, rngs)))
    _write_text(tmp / COMPLETE, f"{run.step}\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def _gather_rng() -> list[dict[str, Any]]:
    """Every rank's RNG state, in rank order (on every rank)."""
    if world_size() == 1:
        return [rng_state()]
    states: list[Any] = [None] * world_size()
    dist.all_gather_object(states, rng_state())
    return states


def _train_state(run: _Run, optimizer_meta: dict[str, Any],
                 rngs: list[dict[str, Any]]) -> dict[str, Any]:
    state: dict[str, Any] = {
        "format": STATE_FORMAT,
        "step": run.step,
        "total_steps": run.total,
        "elapsed_s": run.elapsed,
        "world_size": world_size(),
        "strategy": run.parallel.strategy,
        "scheduler": {"kind": "warmup-cosine", "base_lr": run.cfg.lr,
                      "warmup_steps": run.cfg.warmup_steps, "total_steps": run.total,
                      "min_lr_ratio": run.cfg.min_lr_ratio, "next_lr": run.lr(run.step)},
        "optimizer": optimizer_meta,
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "skipped_steps": run.skipped,
        "rng": rngs[0],
    }
    if len(rngs) > 1:
        state["rng_ranks"] = rngs
    if run.steps_per_epoch is None:
        sampler = ResumableSampler(len(cast(Any, run.dataset)), seed=run.cfg.seed)
        state["sampler"] = sampler.state_dict(run.step * run.cfg.batch_size)
    else:
        state["data"] = {"kind": "stream", "epoch": run.epoch, "epoch_step": run.epoch_step,
                         "steps_per_epoch": run.steps_per_epoch}
    return state


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- metrics and reports ----------------------------------------------------------------


def read_metrics(out_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl`` (an unreadable trailing line is skipped)."""
    path = Path(out_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _log(run: _Run, row: dict[str, Any]) -> None:
    run.metrics.append(row)
    if not is_main():
        return
    run.out_dir.mkdir(parents=True, exist_ok=True)
    with (run.out_dir / "metrics.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
    if run.writer is not None:
        for key, value in row.items():
            if key != "step" and isinstance(value, int | float):
                run.writer.add_scalar(f"train/{key}", value, row["step"])
        run.writer.flush()


def _rewrite_metrics(run: _Run) -> None:
    text = "".join(json.dumps(r) + "\n" for r in run.metrics)
    _write_text(run.out_dir / "metrics.jsonl", text)


def metrics_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows as CSV; the columns are every key, in order of first appearance."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _write_reports(run: _Run) -> None:
    """``metrics.csv`` and ``loss.png`` from the metric rows so far."""
    from mmcore.plot import plot_loss

    _write_text(run.out_dir / "metrics.csv", metrics_csv(run.metrics))
    if run.metrics:
        try:
            plot_loss(run.metrics, run.out_dir / "loss.png", title=f"{run.spec.name}: loss")
        except OSError as exc:  # a plot must never stop training
            warnings.warn(f"could not draw loss.png: {exc}", stacklevel=2)


def _write_spec(run: _Run) -> None:
    import yaml

    data = run.spec.to_dict()
    data["train"]["steps"] = run.total
    run.out_dir.mkdir(parents=True, exist_ok=True)
    _write_text(run.out_dir / "spec.yaml", yaml.safe_dump(data, sort_keys=False))

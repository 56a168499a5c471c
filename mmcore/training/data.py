"""This rank's batches for each optimizer step: map-style data through the resumable
sampler, streaming data epoch by epoch; the data position saved in a checkpoint; and
the CPU thread budget next to DataLoader workers.

Streaming data (an ``IterableDataset`` such as the ``webdataset`` dataset) has no sampler:
each epoch calls ``set_epoch`` and makes exactly ``steps_per_epoch`` steps on every rank.
Its position is saved as (epoch, step in epoch), and a resume starts at an epoch boundary:
from the middle of epoch e it continues with epoch e + 1 (with a warning), because
fast-forwarding a stream would mean reading and decoding everything skipped.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, cast

import torch

from mmcore.data import Collator, ResumableSampler, StepBatches, TrainData, is_stream
from mmcore.distributed import is_main, rank, world_size
from mmcore.errors import CheckpointError
from mmcore.spec import TrainSpec
from mmcore.training.rng import rank_seed
from mmcore.training.state import Run, TrainingError


def steps_per_epoch(cfg: TrainSpec, dataset: TrainData) -> int | None:
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


def _micro_batch_size(run: Run) -> int:
    return run.cfg.batch_size // (world_size() * run.cfg.grad_accum_steps)


def _data_loader(run: Run, **how: Any) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        run.dataset,  # type: ignore[arg-type]
        collate_fn=Collator.for_model(run.model), num_workers=run.cfg.num_workers,
        # a private generator: creating the loader must not draw from the global RNG
        generator=torch.Generator().manual_seed(rank_seed(run.cfg.seed, rank())),
        pin_memory=torch.device(run.device).type == "cuda", **how)


def step_batches(run: Run) -> Iterator[list[dict[str, Any]]]:
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


def _stream_steps(run: Run) -> Iterator[list[dict[str, Any]]]:
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


def advance_epoch(run: Run) -> None:
    """Count one step of a streaming epoch; the last one starts the next epoch."""
    if run.steps_per_epoch is None:
        return
    run.epoch_step += 1
    if run.epoch_step == run.steps_per_epoch:
        run.epoch, run.epoch_step = run.epoch + 1, 0


# --- the data position in a checkpoint ----------------------------------------------------


def data_position(run: Run) -> dict[str, Any]:
    """The ``state.json`` entry that says where the data stands: ``sampler`` (map-style)
    or ``data`` (a stream)."""
    if run.steps_per_epoch is None:
        sampler = ResumableSampler(len(cast(Any, run.dataset)), seed=run.cfg.seed)
        return {"sampler": sampler.state_dict(run.step * run.cfg.batch_size)}
    return {"data": {"kind": "stream", "epoch": run.epoch, "epoch_step": run.epoch_step,
                     "steps_per_epoch": run.steps_per_epoch}}


def restore_data_position(run: Run, state: Mapping[str, Any]) -> None:
    """Check (map-style) or restore (a stream, at the next epoch boundary) the data
    position of a checkpoint's ``state.json``."""
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


def _check_sampler(saved: Mapping[str, int], length: int, batch_size: int, step: int) -> None:
    if int(saved["length"]) != length or int(saved["consumed"]) != step * batch_size:
        raise CheckpointError(
            f"the checkpoint consumed {saved['consumed']} of {saved['length']} samples at step "
            f"{step}; this run has {length} samples and batch size {batch_size}. Resume "
            "with the same data and batch size")


# --- CPU threads ----------------------------------------------------------------------------


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

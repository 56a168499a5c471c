"""One optimizer update: forward and backward over the micro-batches, the loss agreed on
by every rank, clipping, the optimizer step, and what a non-finite loss or gradient does."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.distributed as dist

from mmcore.checkpoint import latest_checkpoint
from mmcore.distributed import is_main, world_size
from mmcore.training.optim import set_lr
from mmcore.training.state import Run, TrainingError

_PRECISION = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _autocast(run: Run) -> AbstractContextManager[Any]:
    if run.cfg.precision == "fp32":
        return nullcontext()
    return torch.autocast(torch.device(run.device).type, dtype=_PRECISION[run.cfg.precision])


def train_step(run: Run, batches: Mapping[str, Any] | Sequence[Mapping[str, Any]]
               ) -> dict[str, float]:
    """One optimizer update at ``run.step`` from one batch or a list of micro-batches (their
    gradients add up, each loss divided by their number); returns the scalar losses
    (``loss`` averaged over ranks, the other terms this rank's), lr and gradient norm.

    A non-finite loss or gradient norm (on any rank) raises TrainingError naming the
    step, or with ``nonfinite: skip`` skips the update and counts it."""
    micro = [batches] if isinstance(batches, Mapping) else list(batches)
    lr = run.lr(run.step)
    set_lr(run.optimizer, lr)
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


def _backward(run: Run, micro: Sequence[Mapping[str, Any]]) -> dict[str, float]:
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


def _all_ranks(run: Run, loss: float) -> tuple[float, bool]:
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


def _skip(run: Run, what: str, value: float, lr: float) -> dict[str, float]:
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


def _nonfinite(run: Run, what: str, value: float) -> str:
    latest = latest_checkpoint(run.out_dir)
    where = f"; the last good checkpoint is {latest}" if latest else ""
    return (f"{what} is {value} at step {run.step + 1} of {run.total} (spec {run.spec.name!r});"
            f" stopped before updating the weights{where}. Try a lower lr, a warmup, "
            "grad_clip, or check the data")

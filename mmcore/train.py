"""Train a model from its spec: AdamW, warmup + cosine, clipping, resumable checkpoints.

A run folder holds::

    spec.yaml  metrics.jsonl  metrics.csv  loss.png  model.safetensors (final)
    checkpoints/step-000200/  model.safetensors  optimizer.safetensors  state.json  COMPLETE

A checkpoint is written into a hidden temporary folder, ``COMPLETE`` last, then renamed;
``resume`` takes the newest folder with ``COMPLETE`` and ignores any other. On CPU, N
steps in one go give bitwise the same parameters as N/2 steps, a resume and N/2 more.
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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from mmcore.checkpoint import atomic_write, load_state, read_tensors, save, save_tensors
from mmcore.data import Collator, Dataset, ResumableSampler, spec_dataset
from mmcore.errors import CheckpointError, MMCoreError
from mmcore.progress import Progress
from mmcore.spec import ModelSpec, TrainSpec

CHECKPOINTS = "checkpoints"
COMPLETE = "COMPLETE"
STATE_FORMAT = "mmcore-train/1"
_STEP_DIR = re.compile(r"step-(\d+)")
_DECAYED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


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
    state = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, slots in state["state"].items():
        for key, value in slots.items():
            if isinstance(value, Tensor):
                tensors[f"state.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: Mapping[str, Tensor],
                         meta: Mapping[str, Any]) -> None:
    """Inverse of :func:`optimizer_state`."""
    slots: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        slots.setdefault(int(index), {})[key] = value
    for index, values in meta["scalars"].items():
        slots.setdefault(int(index), {}).update(values)
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else dict(g)
              for g in meta["param_groups"]]
    try:
        optimizer.load_state_dict({"state": slots, "param_groups": groups})
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"optimizer state does not fit this model: {exc}") from None


# --- RNG state --------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
    """Everything one training invocation works with."""

    spec: ModelSpec
    out_dir: Path
    model: Any  # MultimodalModel
    optimizer: torch.optim.AdamW
    dataset: Dataset
    total: int
    step: int = 0
    elapsed: float = 0.0
    metrics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def cfg(self) -> TrainSpec:
        return self.spec.train

    def lr(self, step: int) -> float:
        return self.cfg.lr * lr_factor(step, total=self.total, warmup=self.cfg.warmup_steps,
                                       min_ratio=self.cfg.min_lr_ratio)


def train(spec: ModelSpec, out_dir: str | Path, *, resume: bool = False,
          steps: int | None = None, progress: bool = True, device: str = "cpu",
          dataset: Dataset | None = None, stop_after: int | None = None,
          overwrite: bool = False) -> Path:
    """Train ``spec`` into ``out_dir``; returns the final ``model.safetensors``.

    ``steps`` overrides ``spec.train.steps`` (the schedule's length). ``resume`` continues
    from the newest complete checkpoint (starting fresh when there is none), keeping the
    schedule length saved there unless ``steps`` is given. ``dataset``
    replaces the spec's ``data:`` (train split). ``stop_after`` stops at that step with a
    checkpoint, as an interruption would; the return value is then that checkpoint's model.
    ``overwrite`` deletes an earlier run's checkpoints and metrics in ``out_dir``.
    """
    out_dir = Path(out_dir)
    run = _open_run(spec, out_dir, resume=resume, steps=steps, device=device,
                    dataset=dataset, overwrite=overwrite)
    stop = run.total if stop_after is None else min(stop_after, run.total)
    _write_spec(run)
    if run.step < stop:
        with cpu_threads(spec.train.num_workers, device):
            _loop(run, stop, progress)
    checkpoint = checkpoint_dir(out_dir, run.step)
    if not (checkpoint / COMPLETE).is_file():
        save_checkpoint(run)
    _write_reports(run)
    if run.step < run.total:
        return checkpoint / "model.safetensors"
    return save(run.model, out_dir / "model.safetensors", extra={"step": str(run.step)})


def _open_run(spec: ModelSpec, out_dir: Path, *, resume: bool, steps: int | None,
              device: str, dataset: Dataset | None, overwrite: bool) -> _Run:
    latest = latest_checkpoint(out_dir)
    if latest is not None and not resume:
        if not overwrite:
            raise TrainingError(f"{out_dir} already holds a run (checkpoint {latest.name}); "
                                "resume it (--resume), overwrite it, or choose another folder")
        _clear_run(out_dir)
        latest = None
    data = dataset if dataset is not None else spec_dataset(spec, "train")
    if latest is None:
        return _fresh_run(spec, out_dir, steps, device, data)
    return _resumed_run(spec, out_dir, latest, steps, device, data)


def _clear_run(out_dir: Path) -> None:
    shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)
    for name in ("metrics.jsonl", "metrics.csv", "loss.png", "model.safetensors", "spec.yaml"):
        (out_dir / name).unlink(missing_ok=True)


def _build(spec: ModelSpec, device: str) -> Any:
    from mmcore.builder import build

    return build(spec, device=device)


def _fresh_run(spec: ModelSpec, out_dir: Path, steps: int | None, device: str,
               dataset: Dataset) -> _Run:
    seed_everything(spec.train.seed)
    model = _build(spec, device)
    (out_dir / "metrics.jsonl").unlink(missing_ok=True)
    return _Run(spec, out_dir, model, make_optimizer(model, spec.train), dataset,
                total=steps or spec.train.steps)


def _resumed_run(spec: ModelSpec, out_dir: Path, checkpoint: Path, steps: int | None,
                 device: str, dataset: Dataset) -> _Run:
    state = _read_state(checkpoint)
    if state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{checkpoint} has training state format "
                              f"{state.get('format')!r}, expected {STATE_FORMAT!r}")
    model = load_state(_build(spec, device), checkpoint / "model.safetensors")
    optimizer = make_optimizer(model, spec.train)
    load_optimizer_state(optimizer, read_tensors(checkpoint / "optimizer.safetensors"),
                         state["optimizer"])
    set_rng_state(state["rng"])
    _check_sampler(state["sampler"], len(dataset), spec.train.batch_size, state["step"])
    run = _Run(spec, out_dir, model, optimizer, dataset, total=steps or state["total_steps"],
               step=int(state["step"]), elapsed=float(state.get("elapsed_s", 0.0)))
    if run.step > run.total:
        raise TrainingError(f"{checkpoint.name} is past the {run.total} steps asked for; "
                            "give more steps or start a new run")
    run.metrics = [r for r in read_metrics(out_dir) if r.get("step", 0) <= run.step]
    _rewrite_metrics(run)
    return run


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


def _loader(run: _Run) -> torch.utils.data.DataLoader:
    cfg = run.cfg
    sampler = ResumableSampler(len(run.dataset), seed=cfg.seed, start=run.step * cfg.batch_size)
    return torch.utils.data.DataLoader(
        run.dataset,  # type: ignore[arg-type]
        batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
        collate_fn=Collator.for_model(run.model), num_workers=cfg.num_workers,
        # a private generator: creating the loader must not draw from the global RNG
        generator=torch.Generator().manual_seed(cfg.seed),
        pin_memory=next(run.model.parameters()).is_cuda)


def _loop(run: _Run, stop: int, progress: bool) -> None:
    cfg = run.cfg
    window = _Window()
    with Progress(run.total, initial=run.step, desc=run.spec.name, enabled=progress,
                  samples_per_unit=cfg.batch_size) as bar:
        for _, batch in zip(range(stop - run.step), _loader(run), strict=False):
            window.add(train_step(run, batch), cfg.batch_size)
            run.step += 1
            bar.update(1, loss=window.last("loss"), lr=run.lr(run.step - 1))
            if run.step % cfg.log_every == 0 or run.step == stop:
                _log(run, window.row(run))
                window = _Window()
            if run.step % cfg.checkpoint_every == 0 and run.step < stop:
                save_checkpoint(run)
                _write_reports(run)


def train_step(run: _Run, batch: Mapping[str, Any]) -> dict[str, float]:
    """One AdamW update at ``run.step``; returns the scalar losses, lr and gradient norm.

    Raises TrainingError naming the step when the loss or the gradient is not finite."""
    lr = run.lr(run.step)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    run.model.train()
    terms = run.model.loss(batch)
    loss = terms["loss"]
    if not torch.isfinite(loss):
        raise TrainingError(_nonfinite(run, "loss", float(loss.detach())))
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for g in run.optimizer.param_groups for p in g["params"]]
    clip = run.cfg.grad_clip if run.cfg.grad_clip is not None else float("inf")
    norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
    if not math.isfinite(norm):
        raise TrainingError(_nonfinite(run, "gradient norm", norm))
    run.optimizer.step()
    out = {k: float(v.detach()) for k, v in terms.items() if v.numel() == 1}
    return {**out, "lr": lr, "grad_norm": norm}


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
        self.count, self.samples = 0, 0
        self.latest: dict[str, float] = {}
        self.started = time.perf_counter()

    def add(self, terms: Mapping[str, float], samples: int) -> None:
        for key, value in terms.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.latest = dict(terms)
        self.count, self.samples = self.count + 1, self.samples + samples

    def last(self, key: str) -> float:
        return self.latest.get(key, float("nan"))

    def row(self, run: _Run) -> dict[str, Any]:
        seconds = time.perf_counter() - self.started
        run.elapsed += seconds
        means = {k: v / max(self.count, 1) for k, v in self.sums.items()}
        means["lr"] = self.latest.get("lr", float("nan"))
        return {"step": run.step, **means,
                "samples_per_s": self.samples / seconds if seconds > 0 else 0.0,
                "epoch": run.step * run.cfg.batch_size / len(run.dataset),
                "elapsed_s": run.elapsed}


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
    """Write ``checkpoints/step-NNNNNN`` via a temporary folder; ``COMPLETE`` goes last."""
    final = checkpoint_dir(run.out_dir, run.step)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save(run.model, tmp / "model.safetensors", extra={"step": str(run.step)})
    tensors, optimizer_meta = optimizer_state(run.optimizer)
    save_tensors(tensors, tmp / "optimizer.safetensors")
    _write_text(tmp / "state.json", json.dumps(_train_state(run, optimizer_meta)))
    _write_text(tmp / COMPLETE, f"{run.step}\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    return final


def _train_state(run: _Run, optimizer_meta: dict[str, Any]) -> dict[str, Any]:
    sampler = ResumableSampler(len(run.dataset), seed=run.cfg.seed)
    return {
        "format": STATE_FORMAT,
        "step": run.step,
        "total_steps": run.total,
        "elapsed_s": run.elapsed,
        "scheduler": {"kind": "warmup-cosine", "base_lr": run.cfg.lr,
                      "warmup_steps": run.cfg.warmup_steps, "total_steps": run.total,
                      "min_lr_ratio": run.cfg.min_lr_ratio, "next_lr": run.lr(run.step)},
        "sampler": sampler.state_dict(run.step * run.cfg.batch_size),
        "optimizer": optimizer_meta,
        "rng": rng_state(),
    }


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
    run.out_dir.mkdir(parents=True, exist_ok=True)
    with (run.out_dir / "metrics.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")


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


"""Evaluation during training (``train.eval_every``), the best checkpoint
(``train.keep_best``) and early stopping (``train.early_stopping``).

Every model reports ``eval/loss`` and each objective's terms (``eval/<objective>/<term>``)
averaged over the evaluation split; a classifier's accuracy also as ``eval/accuracy``.
A contrastive model adds zero-shot accuracy (``eval/zero_shot/top1``, ``/top5``, when the
data has class names) and retrieval recall (``eval/retrieval/<a>_to_<b>/recall@k``) from
:mod:`mmcore.evaluate`. Evaluation changes no RNG state and no weights, so a run with it
resumes as bitwise as one without.

What keep_best and early stopping remember (the best value, its step, evaluations without
improvement) is ``run.eval_state``, saved in each checkpoint's ``state.json``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from mmcore.data import Collator, Dataset, spec_dataset
from mmcore.training.rng import rng_state, set_rng_state
from mmcore.training.state import Run, TrainingError

PREFIX = "eval/"


def open_eval_data(run: Run, dataset: Dataset | None = None) -> Dataset:
    """The evaluation split (``dataset``, else the spec's data at ``train.eval_split``),
    cut to ``train.eval_limit`` items."""
    from mmcore.eval_data import Head

    data = dataset if dataset is not None else spec_dataset(run.spec, run.cfg.eval_split)
    limit = run.cfg.eval_limit
    return Head(data, limit) if limit is not None else data


def evaluate_run(run: Run) -> dict[str, float]:
    """Evaluate ``run.model`` on ``run.eval_data``: ``eval/...`` metrics. RNG states and
    the model's train/eval mode are left as they were."""
    model, data = run.model, run.eval_data
    saved, was_training = rng_state(), model.training
    model.eval()
    try:
        with torch.no_grad():
            metrics = loss_metrics(model, data, run.cfg.eval_batch_size)
            metrics.update(contrastive_metrics(model, data, run.cfg.eval_batch_size))
    finally:
        model.train(was_training)
        set_rng_state(saved)
    return metrics


def _chunks(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(start + size, n))


def loss_metrics(model: Any, data: Dataset, batch_size: int) -> dict[str, float]:
    """The model's loss terms averaged over ``data`` (weighted by batch size)."""
    collate = Collator.for_model(model)
    sums: dict[str, float] = {}
    for rows in _chunks(len(data), batch_size):
        terms = model.loss(collate([data[i] for i in rows]))
        for key, value in terms.items():
            if value.numel() == 1:
                sums[key] = sums.get(key, 0.0) + float(value) * len(rows)
    metrics = {PREFIX + k: v / max(len(data), 1) for k, v in sums.items()}
    accuracies = [k for k in metrics if k.endswith("/accuracy")]
    if len(accuracies) == 1:
        metrics[PREFIX + "accuracy"] = metrics[accuracies[0]]
    return metrics


def contrastive_metrics(model: Any, data: Dataset, batch_size: int) -> dict[str, float]:
    """Zero-shot top-1/top-5 (data with ``class_names``) and retrieval recall@1/5 for a
    model with a contrastive objective; nothing for others."""
    from mmcore import evaluate

    try:
        image_like, text_like = evaluate.contrastive_pair(model)
    except ValueError:
        return {}
    out: dict[str, float] = {}
    if getattr(data, "class_names", None):
        shot = evaluate.zero_shot(model, data, image_like, text_like, batch_size, False)
        out.update({f"{PREFIX}zero_shot/{k}": shot[k] for k in ("top1", "top5")})
    found = evaluate.retrieval(model, data, image_like, text_like, batch_size, False,
                               ks=(1, 5))
    for direction in (f"{image_like}_to_{text_like}", f"{text_like}_to_{image_like}"):
        for k in (1, 5):
            out[f"{PREFIX}retrieval/{direction}/recall@{k}"] = found[direction][f"recall@{k}"]
    return out


# --- keep_best and early stopping --------------------------------------------------------


def metric_mode(metric: str, mode: str = "auto") -> str:
    """``max`` or ``min``; ``auto`` is min for a loss (a name containing ``loss``), else max."""
    if mode != "auto":
        return mode
    return "min" if "loss" in metric.rsplit("/", 1)[-1] else "max"


def improved(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Whether ``value`` beats ``best`` by more than ``min_delta`` (any finite value beats
    None)."""
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value > best + min_delta if mode == "max" else value < best - min_delta


def metric_value(metrics: Mapping[str, float], metric: str, what: str) -> float:
    """``metrics[metric]``; a TrainingError naming the setting and the metrics there are."""
    if metric not in metrics:
        raise TrainingError(f"{what}: no eval metric {metric!r}; this model reports "
                       f"{', '.join(sorted(metrics))}")
    return float(metrics[metric])


def track_best(run: Run, metrics: Mapping[str, float]) -> bool:
    """Update ``run.eval_state["best"]``; True when this evaluation is the new best."""
    metric = run.cfg.keep_best
    if metric is None:
        return False
    value = metric_value(metrics, metric, "train.keep_best")
    mode = metric_mode(metric, run.cfg.keep_best_mode)
    best = run.eval_state.get("best")
    if not improved(value, None if best is None else best["value"], mode):
        return False
    run.eval_state["best"] = {"metric": metric, "mode": mode, "value": value,
                              "step": run.step}
    return True


def track_early_stopping(run: Run, metrics: Mapping[str, float]) -> None:
    """Count evaluations without improvement; stop the run after ``patience`` of them."""
    cfg = run.cfg.early_stopping
    if cfg is None:
        return
    value = metric_value(metrics, cfg.metric, "train.early_stopping.metric")
    mode = metric_mode(cfg.metric, cfg.mode)
    state = run.eval_state.setdefault("early", {"best": None, "bad": 0})
    if improved(value, state["best"], mode, cfg.min_delta):
        state.update(best=value, bad=0, step=run.step)
        return
    state["bad"] += 1
    if state["bad"] >= cfg.patience:
        run.stop(f"early stopping: {cfg.metric} has not improved for {state['bad']} "
                 f"evaluations (best {state['best']} at step {state.get('step')})")


def due(run: Run) -> bool:
    """Whether an evaluation is due at ``run.step``: every ``eval_every`` steps and at the
    last step of the schedule."""
    every = run.cfg.eval_every
    return every is not None and (run.step % every == 0 or run.step == run.total)

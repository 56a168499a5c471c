"""Linear probe: logistic regression on a model's frozen pooled features.

As in the CLIP paper (Radford et al. 2021, appendix A.3): features of one modality are
taken from the frozen model, a multinomial logistic regression is fitted with L-BFGS
(cross-entropy + L2 on the weights), and the L2 strength is chosen on a validation split
carved from the training features, over a log-spaced grid; the probe is then refitted on
all training features with that strength and scored on the evaluation data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mmcore.data import TRAIN, Dataset, spec_dataset
from mmcore.progress import Progress

#: L2 strengths tried: 1e-6 ... 1e2 (per sample, on standardised features)
DEFAULT_GRID: tuple[float, ...] = tuple(10.0 ** k for k in range(-6, 3))


@dataclass
class LinearProbe:
    """A fitted probe: standardise, then ``x @ weight + bias`` over ``classes``."""

    weight: Tensor  # (D, C)
    bias: Tensor  # (C,)
    mean: Tensor  # (D,)
    std: Tensor  # (D,)
    classes: Tensor  # (C,) the label each output stands for
    l2: float
    validation_accuracy: float

    def logits(self, features: Tensor) -> Tensor:
        """(N, D) -> (N, C)."""
        x = (features.double() - self.mean) / self.std
        return x @ self.weight + self.bias

    def predict(self, features: Tensor) -> Tensor:
        """(N, D) -> (N,) predicted labels."""
        return self.classes[self.logits(features).argmax(dim=1)]


def fit_logistic(x: Tensor, y: Tensor, num_classes: int, l2: float,
                 max_iter: int = 200) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression by L-BFGS: minimise mean cross-entropy +
    ``l2 / 2 * |W|^2``. x: (N, D) float64, y: (N,) in [0, C) -> (weight (D, C), bias (C,))."""
    weight = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter,
                                  tolerance_grad=1e-9, tolerance_change=1e-12,
                                  history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def _accuracy(logits: Tensor, y: Tensor) -> float:
    return float((logits.argmax(dim=1) == y).double().mean()) if len(y) else 0.0


def fit_linear_probe(features: Tensor, labels: Tensor, *,
                     grid: Sequence[float] = DEFAULT_GRID, val_fraction: float = 0.2,
                     seed: int = 0, max_iter: int = 200) -> LinearProbe:
    """Fit a probe on features (N, D) and labels (N,): the L2 strength with the best
    accuracy on a random ``val_fraction`` of the items (ties: the stronger), then a refit
    on all of them."""
    if len(labels) < 2:
        raise ValueError(f"a linear probe needs at least 2 training items, got {len(labels)}")
    classes, y = torch.unique(labels, return_inverse=True)  # (C,), (N,) in [0, C)
    x = features.double()
    mean, std = x.mean(dim=0), x.std(dim=0).clamp_min(1e-8)
    x = (x - mean) / std
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_val = min(max(1, int(len(y) * val_fraction)), len(y) - 1)
    val, fit = order[:n_val], order[n_val:]
    best_l2, best_acc = grid[0], -1.0
    for l2 in sorted(grid):
        w, b = fit_logistic(x[fit], y[fit], len(classes), l2, max_iter)
        acc = _accuracy(x[val] @ w + b, y[val])
        if acc >= best_acc:
            best_l2, best_acc = l2, acc
    weight, bias = fit_logistic(x, y, len(classes), best_l2, max_iter)
    return LinearProbe(weight, bias, mean, std, classes, best_l2, best_acc)


def score_probe(probe: LinearProbe, features: Tensor, labels: Tensor) -> dict[str, Any]:
    """Top-1 accuracy on (N, D) features; labels the probe never saw count as errors and
    are reported as ``unseen_classes`` / ``unseen_samples``."""
    seen = torch.isin(labels, probe.classes)
    correct = probe.predict(features) == labels
    return {"top1": float(correct.double().mean()) if len(labels) else 0.0,
            "chance_top1": 1.0 / len(probe.classes),
            "unseen_classes": len(set(labels[~seen].tolist())),
            "unseen_samples": int((~seen).sum())}


# --- on a model ----------------------------------------------------------------------------


def features(model: Any, dataset: Dataset, modality: str, batch_size: int = 256,
             progress: bool = True, desc: str = "features") -> tuple[Tensor, Tensor]:
    """The frozen pooled embeddings of ``modality`` (N, E) and the labels (N,)."""
    from mmcore.eval_data import embed_raw, read_columns

    with Progress(2 * len(dataset), desc=desc, unit="item", enabled=progress) as bar, \
            torch.no_grad():
        data = read_columns(dataset, [modality, "label"], bar)
        emb = embed_raw(model, modality, data[modality], batch_size, bar, normalize=False)
    return emb, torch.tensor(data["label"], dtype=torch.long)


def linear_probe(model: Any, train_data: Dataset, eval_data: Dataset, *,
                 modality: str | None = None, batch_size: int = 256, progress: bool = True,
                 grid: Sequence[float] = DEFAULT_GRID, val_fraction: float = 0.2,
                 seed: int = 0) -> dict[str, Any]:
    """Fit a probe on ``train_data``'s features of ``modality`` (default: the spec's first
    modality), score it on ``eval_data``: a JSON-able dict of metrics."""
    modality = modality or default_modality(model)
    if modality not in model.modalities:
        raise ValueError(f"--modality {modality!r} is not one of this model's modalities "
                         f"{model.modalities}")
    was_training = model.training
    model.eval()
    try:
        train_x, train_y = features(model, train_data, modality, batch_size, progress,
                                    "probe train")
        eval_x, eval_y = features(model, eval_data, modality, batch_size, progress,
                                  "probe eval")
    finally:
        model.train(was_training)
    probe = fit_linear_probe(train_x, train_y, grid=grid, val_fraction=val_fraction, seed=seed)
    return {"task": "linear-probe", "modality": modality, "feature_dim": train_x.shape[1],
            "train_samples": len(train_y), "samples": len(eval_y),
            "num_classes": len(probe.classes), "l2": probe.l2,
            "validation_accuracy": probe.validation_accuracy,
            "train_accuracy": float((probe.predict(train_x) == train_y).double().mean()),
            **score_probe(probe, eval_x, eval_y)}


def default_modality(model: Any) -> str:
    """The spec's first modality (the model's first, sorted, without a spec)."""
    spec = getattr(model, "spec", None)
    return next(iter(spec.modalities)) if spec is not None else model.modalities[0]


def probe_model(model: Any, eval_data: Dataset, *, train_data: Dataset | None = None,
                train_split: str = TRAIN, train_limit: int | None = None,
                **options: Any) -> dict[str, Any]:
    """:func:`linear_probe` with the training features from the model's spec data at
    ``train_split`` (its first ``train_limit`` items) unless ``train_data`` is given."""
    from mmcore.eval_data import Head

    data = train_data if train_data is not None else spec_dataset(model.spec, train_split)
    if train_limit is not None:
        data = Head(data, train_limit)
    return linear_probe(model, data, eval_data, **options)

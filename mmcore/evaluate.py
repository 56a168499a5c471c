"""Evaluate a trained model: zero-shot classification and cross-modal retrieval for a
contrastive model, accuracy for a model with a classification head, and a linear probe on
any model's frozen pooled features (:mod:`mmcore.probe`).

Which embeddings to compare comes from the model's contrastive objective: its first pair
``(a, b)`` names the "image-like" modality ``a`` (what gets classified) and the
"text-like" modality ``b`` (what the class prompts are written in).

Each task is also a plain function of (model, dataset, batch size) -> metrics, for use
during training: :func:`zero_shot`, :func:`retrieval`, :func:`classification` and
:func:`mmcore.probe.linear_probe`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from mmcore.data import EVAL, Dataset, spec_dataset
from mmcore.errors import suggest
from mmcore.eval_data import Head, batches, embed_raw, read_columns
from mmcore.progress import Progress
from mmcore.tasks import EvalTask, TaskOptions, registered_tasks

Task = Literal["zero-shot", "retrieval", "classification", "linear-probe"]
TASKS: tuple[str, ...] = ("zero-shot", "retrieval", "classification", "linear-probe")
DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.", "a {}.")


def evaluate(model_or_checkpoint: Any, task: Task, *, dataset: Dataset | None = None,
             batch_size: int = 256, progress: bool = True, device: str | None = None,
             limit: int | None = None, pair: tuple[str, str] | None = None,
             split: str = EVAL, **probe: Any) -> dict[str, Any]:
    """Run ``task`` and return its metrics (plus chance levels) as a JSON-able dict.

    ``model_or_checkpoint``: a MultimodalModel, a ``.safetensors`` file, a checkpoint folder
    or a training run folder. ``dataset`` defaults to the spec's ``data:`` at ``split``
    (default ``eval``; for shapes: the colour-shape combinations never trained on,
    ``eval-seen``: new images of the trained ones). ``limit`` caps the number of evaluated
    items. ``pair`` (image-like, text-like) overrides the objective's first pair, e.g.
    ``("image", "text")`` for a model whose first pair is audio-text. ``probe``: the
    options of :func:`mmcore.probe.probe_model` (``modality``, ``train_limit``, ...).
    """
    plugin_tasks = registered_tasks() if task not in TASKS else {}
    if task not in TASKS and task not in plugin_tasks:
        known = [*TASKS, *plugin_tasks]
        raise ValueError(f"unknown task {task!r}.{suggest(task, known)} Tasks: "
                         f"{', '.join(known)}")
    model = resolve_model(model_or_checkpoint, device)
    data = dataset if dataset is not None else _spec_data(model.spec, split)
    if limit is not None and data is not None:
        data = Head(data, limit)
    if task in plugin_tasks:  # the options of a plugin's task arrive in ``probe``
        options = TaskOptions(batch_size, progress, device, limit, dict(probe))
        return run_plugin_task(plugin_tasks[task], model, data, options)
    if data is None:
        raise ValueError(f"{task} needs data: the model's spec names none (give --data)")
    if task in ("classification", "linear-probe"):
        return _supervised(model, task, data, batch_size, progress, probe)
    image_like, text_like = pair or contrastive_pair(model)
    unknown = sorted({image_like, text_like} - set(model.modalities))
    if unknown:
        raise ValueError(f"pair names unknown modalities {unknown}; the model has "
                         f"{model.modalities}")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if task == "zero-shot":
                return zero_shot(model, data, image_like, text_like, batch_size, progress)
            return retrieval(model, data, image_like, text_like, batch_size, progress)
    finally:
        model.train(was_training)


def _spec_data(spec: Any, split: str) -> Dataset | None:
    """The spec's data at ``split``; None when the spec names no data."""
    return spec_dataset(spec, split) if spec.data is not None else None


def run_plugin_task(task: EvalTask, model: Any, data: Dataset | None,
                    options: TaskOptions) -> dict[str, Any]:
    """A plugin's evaluation task, the model in eval mode under no_grad."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return task.run(model, data, options)
    finally:
        model.train(was_training)


def _supervised(model: Any, task: str, data: Dataset, batch_size: int, progress: bool,
                probe: Mapping[str, Any]) -> dict[str, Any]:
    """``classification`` or ``linear-probe`` on ``data``, the model in eval mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if task == "classification":
                return _classify(model, data, batch_size, progress)
        from mmcore.probe import probe_model

        return probe_model(model, data, batch_size=batch_size, progress=progress, **probe)
    finally:
        model.train(was_training)


def _classify(model: Any, data: Dataset, batch_size: int, progress: bool) -> dict[str, Any]:
    """Classification by the model's classification head; a contrastive model without one
    (e.g. a CLIP run) classifies zero-shot by prompts of the class names, and says so."""
    try:
        classifier_head(model)
    except ValueError:
        try:
            image_like, text_like = contrastive_pair(model)
        except ValueError:
            raise ValueError("classification needs a classification head or a contrastive "
                             "objective (zero-shot by class names); this model has neither") \
                from None
        result = zero_shot(model, data, image_like, text_like, batch_size, progress)
        return {**result, "task": "classification",
                "method": "zero-shot: no classification head, classified by prompts of the "
                          "class names"}
    return {**classification(model, data, batch_size, progress), "method": "head"}


def resolve_model(source: Any, device: str | None = None) -> Any:
    """A model as is (moved to ``device`` if given), or loaded from a file or folder.

    A run folder without a final ``model.safetensors`` uses its newest complete checkpoint
    (:func:`mmcore.checkpoint.resolve_model_file`)."""
    if isinstance(source, torch.nn.Module):
        return source.to(device) if device else source
    from mmcore.checkpoint import load

    return load(Path(source), device=device or "cpu")


def contrastive_pair(model: Any) -> tuple[str, str]:
    """(image-like, text-like) embedding names: the first pair of the first objective that
    declares ``pairs`` (in its config or itself)."""
    for objective in getattr(model, "objectives", {}).values():
        pairs = getattr(getattr(objective, "cfg", None), "pairs", None)
        pairs = pairs if pairs is not None else getattr(objective, "pairs", None)
        if pairs:
            a, b = pairs[0]
            return str(a), str(b)
    raise ValueError("zero-shot and retrieval need a contrastive objective whose 'pairs' name "
                     "the (image-like, text-like) embeddings; this model has "
                     f"{sorted(getattr(model, 'objectives', {}))}")


# --- encoding ---------------------------------------------------------------------------


def class_embeddings(model: Any, modality: str, class_names: Sequence[str],
                     templates: Sequence[str], batch_size: int = 256) -> Tensor:
    """Prompt ensembles: every template per class, L2-normalise, average, re-normalise.

    -> (C, E), one unit vector per class."""
    prompts = [t.format(name) for name in class_names for t in templates]
    emb = embed_raw(model, modality, prompts, batch_size)  # (C * T, E)
    emb = emb.view(len(class_names), len(templates), -1).mean(dim=1)  # (C, E)
    return F.normalize(emb, dim=-1)


# --- zero-shot --------------------------------------------------------------------------


def zero_shot(model: Any, dataset: Dataset, image_like: str, text_like: str,
              batch_size: int = 256, progress: bool = True) -> dict[str, Any]:
    """Top-1/top-5 accuracy of classifying ``image_like`` items by prompt ensembles.

    ``top1``/``top5`` choose among every class name (for shapes' eval split: 36 names, 6 of
    them never trained on - the generalised zero-shot setting); ``present_classes`` chooses
    only among the classes that occur in ``dataset`` (the classic zero-shot setting).
    Each comes with its chance level."""
    names = list(getattr(dataset, "class_names", None) or [])
    if not names:
        raise ValueError("zero-shot needs a dataset with class_names")
    templates = list(getattr(dataset, "templates", None) or DEFAULT_TEMPLATES)
    with Progress(2 * len(dataset), desc="zero-shot", unit="item", enabled=progress) as bar:
        data = read_columns(dataset, [image_like, "label"], bar)
        classes = class_embeddings(model, text_like, names, templates, batch_size)  # (C, E)
        images = embed_raw(model, image_like, data[image_like], batch_size, bar)  # (N, E)
    labels = torch.tensor(data["label"], dtype=torch.long)
    scores = images @ classes.t()  # (N, C)
    present = sorted(set(labels.tolist()))
    return {
        "task": "zero-shot", "modalities": [image_like, text_like], "samples": len(labels),
        "templates": len(templates), "num_classes": len(names),
        **_topk(scores, labels, len(names)),
        "present_classes": {"num_classes": len(present),
                            **_topk(scores[:, present], _reindex(labels, present),
                                    len(present))},
    }


def _reindex(labels: Tensor, present: list[int]) -> Tensor:
    lookup = {c: i for i, c in enumerate(present)}
    return torch.tensor([lookup[int(v)] for v in labels], dtype=torch.long)


def _topk(scores: Tensor, labels: Tensor, num_classes: int) -> dict[str, float]:
    """Top-1/top-5 accuracy of scores (N, C) against labels (N,), with chance levels."""
    k = min(5, num_classes)
    top = scores.topk(k, dim=1).indices  # (N, k)
    hit = top == labels[:, None]
    return {"top1": float(hit[:, 0].float().mean()), "top5": float(hit.any(1).float().mean()),
            "chance_top1": 1.0 / num_classes, "chance_top5": k / num_classes}


# --- retrieval --------------------------------------------------------------------------


def retrieval(model: Any, dataset: Dataset, image_like: str, text_like: str,
              batch_size: int = 256, progress: bool = True,
              ks: Sequence[int] = (1, 5, 10)) -> dict[str, Any]:
    """Recall@k both ways between the paired items of ``dataset``.

    When items carry a ``label``, a retrieved item counts as correct if it has the query's
    label (shapes captions do not say where a shape is, so same-class pairs are equally
    right); otherwise only its own pair counts. Duplicate captions (the same text) count
    once: as candidates, five copies of one caption would fill the top five; as queries,
    they would repeat one query. Chance levels are given for each k."""
    n = len(dataset)
    with Progress(3 * n, desc="retrieval", unit="item", enabled=progress) as bar:
        first = dataset[0] if n else {}
        keys = [image_like, text_like] + (["label"] if "label" in first else [])
        data = read_columns(dataset, keys, bar)
        images = embed_raw(model, image_like, data[image_like], batch_size, bar)  # (N, E)
        texts = embed_raw(model, text_like, data[text_like], batch_size, bar)  # (N, E)
    if "label" in data:
        labels = torch.tensor(data["label"], dtype=torch.long)
        relevant = labels[:, None] == labels[None, :]  # (N, N)
    else:
        relevant = torch.eye(n, dtype=torch.bool)
    keep, groups = unique_texts(data[text_like])  # (U,), (U, N)
    relevant = (relevant.float() @ groups.t().float()) > 0  # (N images, U texts)
    scores = images @ texts[keep].t()  # (N images, U texts)
    out: dict[str, Any] = {"task": "retrieval", "modalities": [image_like, text_like],
                           "samples": n, "match": "label" if "label" in data else "pair",
                           f"unique_{text_like}": len(keep)}
    out[f"{image_like}_to_{text_like}"] = _recall(scores, relevant, ks)
    out[f"{text_like}_to_{image_like}"] = _recall(scores.t(), relevant.t(), ks)
    return out


def unique_texts(values: Sequence[Any]) -> tuple[Tensor, Tensor]:
    """(index of each distinct value's first occurrence (U,), membership (U, N) bool).
    Values that are not strings are all distinct."""
    first: dict[Any, int] = {}  # value -> its group
    owner: list[int] = []
    keep: list[int] = []
    for i, value in enumerate(values):
        key = value if isinstance(value, str) else ("item", i)
        if key not in first:
            first[key] = len(keep)
            keep.append(i)
        owner.append(first[key])
    groups = torch.tensor(owner)[None, :] == torch.arange(len(first))[:, None]  # (U, N)
    return torch.tensor(keep, dtype=torch.long), groups


def _recall(scores: Tensor, relevant: Tensor, ks: Sequence[int]) -> dict[str, float]:
    """Recall@k of queries (rows) over candidates (columns), and chance levels."""
    n = scores.shape[1]
    order = scores.argsort(dim=1, descending=True)  # (Q, N)
    hits = relevant.gather(1, order)  # (Q, N) relevance in ranked order
    positives = relevant.sum(dim=1)  # (Q,)
    out = {}
    for k in ks:
        out[f"recall@{k}"] = float(hits[:, :k].any(dim=1).float().mean())
        out[f"chance@{k}"] = float(_chance_hit(positives, n, min(k, n)).mean())
    return out


def _chance_hit(positives: Tensor, n: int, k: int) -> Tensor:
    """P(at least one of ``positives`` among k of n random candidates). (Q,)"""
    miss = torch.ones(positives.shape, dtype=torch.float64)
    for j in range(k):
        miss = miss * ((n - positives - j).clamp(min=0).double() / (n - j))
    return 1.0 - miss


# --- classification ---------------------------------------------------------------------


def classifier_heads(model: Any) -> list[tuple[str, str]]:
    """(head name, label key) of each of the model's classifiers: the heads ``classification``
    objectives train (their ``head`` and ``target``), else the model's only head."""
    found = []
    for objective in getattr(model, "objectives", {}).values():
        cfg = getattr(objective, "cfg", None)
        head, target = getattr(cfg, "head", None), getattr(cfg, "target", None)
        if isinstance(head, str) and isinstance(target, str) and head in model.heads:
            found.append((head, target))
    if not found and len(getattr(model, "heads", {})) == 1:
        found.append((next(iter(model.heads)), "label"))
    if not found:
        raise ValueError("classification needs a model with a classification head (a "
                         "'classification' objective naming it); this model has heads "
                         f"{sorted(getattr(model, 'heads', {}))}")
    return found


def classifier_head(model: Any) -> tuple[str, str]:
    """The first of :func:`classifier_heads`."""
    return classifier_heads(model)[0]


def classification(model: Any, dataset: Dataset, batch_size: int = 256,
                   progress: bool = True) -> dict[str, Any]:
    """Top-1/top-5 accuracy of the model's classification head on ``dataset`` (items with
    the model's modalities and a label), with chance levels over the head's classes. A model
    with several classification heads (e.g. colour and shape) reports the first as usual
    and each other one as ``<head>/top1`` and ``<head>/top5``."""
    from mmcore.data import Collator

    heads = classifier_heads(model)
    keys = [*model.modalities, *(target for _, target in heads)]
    collate = Collator.for_model(model)
    logits: dict[str, list[Tensor]] = {h: [] for h, _ in heads}
    labels: dict[str, list[Tensor]] = {h: [] for h, _ in heads}
    with Progress(len(dataset), desc="classification", unit="item", enabled=progress) as bar:
        for rows in batches(len(dataset), batch_size):
            items = [{k: v for k, v in dataset[i].items() if k in keys} for i in rows]
            batch = collate(items)
            out = model(batch).heads
            for head, target in heads:
                logits[head].append(out[head].float().cpu())  # (B, C)
                labels[head].append(batch[target].cpu())
            bar.update(len(rows))
    (first, _), *others = heads
    scores, truth = torch.cat(logits[first]), torch.cat(labels[first])
    result = {"task": "classification", "head": first, "samples": len(truth),
              "num_classes": scores.shape[1], **_topk(scores, truth, scores.shape[1])}
    for head, _ in others:
        more = _topk(torch.cat(logits[head]), torch.cat(labels[head]), logits[head][0].shape[1])
        result.update({f"{head}/{k}": more[k] for k in ("top1", "top5")})
    return result

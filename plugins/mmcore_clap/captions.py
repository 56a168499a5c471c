"""Audio captioning on the built-in shapes-sounds: the ``shapes-sounds-captions`` dataset
(each sound with the caption "a <colour> <shape>" as byte ids) and the ``audio-captioning``
evaluation task of ``mmcore eval`` (greedy captions through the captioning objective's
decoder, judged on their key words and word overlap).

Metrics: ``keywords`` (both the colour and the shape word right), ``colour`` and
``shape`` (each alone), ``exact`` (the whole caption), ``word_f1`` (word-level F1 of the
caption against the reference, averaged over items) and ``bleu1`` (clipped unigram
precision with the brevity penalty, corpus level).
"""

from __future__ import annotations

import argparse
import math
from collections import Counter
from typing import Any

import torch
from pydantic import Field

from mmcore.tasks import TaskOptions
from mmcore_clap.datasets import ShapesSoundsConfig, ShapesSoundsDataset

BOS, EOS, PAD = 256, 257, 258  # the byte-text ids


class ShapesSoundsCaptionsConfig(ShapesSoundsConfig):
    #: caption length in byte ids (BOS and EOS included), padded with 258
    caption_length: int = Field(24, ge=4, le=256)


def caption_of(class_name: str) -> str:
    """'red circle' -> 'a red circle'."""
    return f"a {class_name}"


def caption_ids(text: str, length: int) -> torch.Tensor:
    """BOS + UTF-8 bytes + EOS, padded with PAD to ``length``. (length,) int64"""
    row = [BOS, *text.encode("utf-8")[: length - 2], EOS]
    return torch.tensor(row + [PAD] * (length - len(row)), dtype=torch.long)


class ShapesSoundsCaptionsDataset(ShapesSoundsDataset):
    """shapes-sounds items plus ``"caption"``: byte ids (caption_length,) of "a <class>"."""

    cfg: ShapesSoundsCaptionsConfig

    @classmethod
    def from_config(cls, cfg: ShapesSoundsConfig, ctx: Any = None
                    ) -> ShapesSoundsCaptionsDataset:
        return cls(cfg)

    def split(self, name: str) -> ShapesSoundsCaptionsDataset:
        if name not in self.splits:
            raise ValueError(f"shapes-sounds-captions has no split {name!r}; splits are "
                             f"{', '.join(self.splits)}")
        return ShapesSoundsCaptionsDataset(self.cfg.model_copy(update={"split": name}))

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = super().__getitem__(index)
        item.pop("image")  # the captioner hears; it does not see
        text = caption_of(self.class_names[item["label"]])
        item["caption"] = caption_ids(text, self.cfg.caption_length)
        return item


# -- metrics ------------------------------------------------------------------------------


def word_f1(predicted: str, reference: str) -> float:
    """Word-level F1 (bag of words) of one caption against its reference."""
    pred, ref = Counter(predicted.split()), Counter(reference.split())
    common = sum((pred & ref).values())
    if common == 0:
        return 0.0
    precision, recall = common / sum(pred.values()), common / sum(ref.values())
    return 2 * precision * recall / (precision + recall)


def bleu1(predicted: list[str], references: list[str]) -> float:
    """Corpus BLEU-1: clipped unigram precision times the brevity penalty."""
    matched = total = ref_length = 0
    for p, r in zip(predicted, references, strict=True):
        pred, ref = Counter(p.split()), Counter(r.split())
        matched += sum((pred & ref).values())
        total += sum(pred.values())
        ref_length += sum(ref.values())
    if total == 0 or matched == 0:
        return 0.0
    penalty = 1.0 if total > ref_length else math.exp(1 - ref_length / total)
    return penalty * matched / total


def caption_metrics(predicted: list[str], classes: list[str]) -> dict[str, float]:
    """Predicted captions vs the items' class names ('colour shape') -> the metrics."""
    references = [caption_of(c) for c in classes]
    words = [p.split() for p in predicted]
    colour = [c.split()[0] in w for c, w in zip(classes, words, strict=True)]
    shape = [c.split()[1] in w for c, w in zip(classes, words, strict=True)]
    n = max(len(predicted), 1)
    return {"keywords": sum(a and b for a, b in zip(colour, shape, strict=True)) / n,
            "colour": sum(colour) / n, "shape": sum(shape) / n,
            "exact": sum(p.strip() == r for p, r in zip(predicted, references,
                                                        strict=True)) / n,
            "word_f1": sum(word_f1(p, r) for p, r in zip(predicted, references,
                                                         strict=True)) / n,
            "bleu1": bleu1(predicted, references), "items": float(len(predicted))}


# -- the task -----------------------------------------------------------------------------


def _captioner(model: Any) -> tuple[str, Any]:
    """The model's captioning objective (name, module); ValueError when it has none."""
    for name, objective in model.objectives.items():
        if hasattr(objective, "generate") and hasattr(objective, "decoder"):
            return name, objective
    raise ValueError("audio-captioning needs a model with a captioning objective (its "
                     f"objectives: {', '.join(sorted(model.objectives)) or 'none'})")


def decode_bytes(ids: list[int]) -> str:
    """Generated byte ids (BOS first) -> text, up to EOS."""
    out = []
    for token in ids[1:]:
        if token == EOS:
            break
        if token < 256:
            out.append(token)
    return bytes(out).decode("utf-8", errors="replace")


@torch.no_grad()
def caption_audio(model: Any, items: list[Any], max_new_tokens: int = 22) -> list[str]:
    """Greedy captions of audio items (paths or (waveform, rate) pairs)."""
    _, objective = _captioner(model)
    modality = objective.cfg.context
    features = model.preprocess(modality, items)
    device = next(model.parameters()).device
    context = model.fusion(model.encode({modality: _to(features, device)})).tokens[modality]
    out = objective.generate(context, bos_id=BOS, eos_id=EOS, pad_id=PAD,
                             max_new_tokens=min(max_new_tokens,
                                                objective.cfg.max_length - 1))
    return [decode_bytes(row) for row in out.ids.tolist()]


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, dict):
        return {k: v.to(device) for k, v in x.items()}
    return x.to(device)


class AudioCaptioningTask:
    """``mmcore eval RUN --task audio-captioning``: caption each held-out sound."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--show", type=int, default=0, metavar="N",
                            help="audio-captioning: also return the first N captions")

    def run(self, model: Any, data: Any, options: TaskOptions) -> dict[str, Any]:
        if data is None or not hasattr(data, "class_names"):
            raise ValueError("audio-captioning needs the shapes-sounds-captions data (the "
                             "spec's data, or --data)")
        count = len(data) if options.limit is None else min(options.limit, len(data))
        predicted: list[str] = []
        classes: list[str] = []
        for start in range(0, count, options.batch_size):
            items = [data[i] for i in range(start, min(count, start + options.batch_size))]
            predicted += caption_audio(model, [x["audio"] for x in items])
            classes += [data.class_names[x["label"]] for x in items]
        metrics: dict[str, Any] = caption_metrics(predicted, classes)
        show = int(options.extra.get("show") or 0)
        if show:
            metrics["captions"] = [{"caption": p, "reference": caption_of(c)}
                                   for p, c in zip(predicted[:show], classes[:show],
                                                   strict=True)]
        return metrics

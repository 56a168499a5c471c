"""The ``captioning`` evaluation task: greedy captions of held-out images, scored by their
exact colour and shape words, beside retrieval recall@1 of the ITC embeddings.
``mmcore eval RUN --task captioning`` runs it on the spec's evaluation split (for shapes:
colour-shape combinations training never shows)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable, Sequence
from typing import Any

from mmcore.evaluate import retrieval
from mmcore.generation import GenerationConfig
from mmcore.tasks import TaskOptions
from mmcore_blip.runner import blip_parts, caption
from mmcore_shapes.render import COLOURS, SHAPES


def words_of(text: str, vocabulary: Iterable[str]) -> set[str]:
    """The vocabulary words ``text`` contains as whole words."""
    found = set(re.findall(r"[a-z]+", text.lower()))
    return found & set(vocabulary)


def caption_accuracy(captions: Sequence[str], class_names: Sequence[str]) -> dict[str, Any]:
    """``accuracy``: the caption names exactly the true colour and the true shape (and no
    other colour or shape); ``colour_accuracy`` / ``shape_accuracy`` each word alone."""
    if len(captions) != len(class_names) or not captions:
        raise ValueError(f"{len(captions)} captions for {len(class_names)} images")
    colour_ok = shape_ok = both = 0
    for text, name in zip(captions, class_names, strict=True):
        colour, shape = name.split(" ")
        c = words_of(text, COLOURS) == {colour}
        s = words_of(text, SHAPES) == {shape}
        colour_ok, shape_ok, both = colour_ok + c, shape_ok + s, both + (c and s)
    n = len(captions)
    return {"accuracy": both / n, "colour_accuracy": colour_ok / n,
            "shape_accuracy": shape_ok / n, "images": n}


class CaptioningTask:
    """``captioning``: items ``{"image", "label"}`` of a dataset with ``class_names``."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--max-new-tokens", type=int, default=30, metavar="N",
                            help="captioning: longest caption in tokens (default 30)")

    def run(self, model: Any, data: Any, options: TaskOptions) -> dict[str, Any]:
        if data is None or not hasattr(data, "class_names"):
            raise ValueError("captioning needs labelled data with class_names (e.g. shapes)")
        parts = blip_parts(model)
        n = min(len(data), options.limit or len(data))
        items = [data[i] for i in range(n)]
        config = GenerationConfig(max_new_tokens=int(options.extra.get("max_new_tokens", 30)))
        captions: list[str] = []
        for start in range(0, n, options.batch_size):
            batch = items[start : start + options.batch_size]
            captions += caption(model, [it["image"] for it in batch], config=config)
        names = [data.class_names[it["label"]] for it in items]
        out: dict[str, Any] = {"task": "captioning", **caption_accuracy(captions, names),
                               "examples": "; ".join(f"{c} -> {t!r}" for c, t in
                                                     zip(names[:3], captions[:3], strict=True))}
        if "itc" in parts.fusion.cfg.modes:
            recall = retrieval(model, _Items(items), parts.fusion.cfg.image,
                               parts.fusion.cfg.text, options.batch_size, False, ks=(1,))
            out["retrieval_recall@1"] = {k: v for k, v in recall.items() if "_to_" in k}
        return out


class _Items:
    """A list of items as a dataset."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]

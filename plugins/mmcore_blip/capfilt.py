"""CapFilt (BLIP's dataset bootstrapping): the captioner writes a synthetic caption for each
image by nucleus sampling (through the one generation loop), the ITM filter keeps the
captions, web and synthetic, that it judges to match, and the result is written as an
``image-captions`` folder (``images/*.png`` + ``captions.jsonl``) that ``mmcore train``
reads. When the source items say whether their caption is right (``caption_ok``, as
``shapes-noisy`` does), the filter's precision and recall at removing wrong captions are
measured."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmcore.generation import GenerationConfig
from mmcore.imaging import to_pil
from mmcore_blip.runner import blip_parts, caption, itm_scores, preprocess_images


@dataclass
class CapFiltOptions:
    """Nucleus sampling ``top_p`` and ``temperature``, the ITM ``threshold`` on P(matched),
    captions per batch, items to read (None: all) and the sampling seed."""

    top_p: float = 0.9
    temperature: float = 1.0
    threshold: float = 0.5
    batch_size: int = 64
    limit: int | None = None
    seed: int = 0
    max_new_tokens: int = 30


@dataclass
class CapFiltReport:
    """Counts of what was kept, and the filter's quality on labelled wrong captions."""

    images: int = 0
    web_kept: int = 0
    synthetic_kept: int = 0
    #: web captions known to be wrong, removed ones, and wrongly removed right ones
    wrong: int = 0
    wrong_removed: int = 0
    right_removed: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    def metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {"images": self.images, "web_kept": self.web_kept,
                               "synthetic_kept": self.synthetic_kept,
                               "captions_written": self.web_kept + self.synthetic_kept}
        if self.wrong:
            removed = self.wrong_removed + self.right_removed
            out.update(wrong_captions=self.wrong,
                       removal_recall=self.wrong_removed / self.wrong,
                       removal_precision=self.wrong_removed / removed if removed else 0.0)
        return out


def _batches(data: Any, options: CapFiltOptions) -> Any:
    n = min(len(data), options.limit or len(data))
    for start in range(0, n, options.batch_size):
        yield start, [data[i] for i in range(start, min(n, start + options.batch_size))]


def capfilt(model: Any, data: Any, out: Path, options: CapFiltOptions) -> CapFiltReport:
    """Caption and filter ``data`` (items ``{"image", "text"[, "caption_ok"]}``) into the
    ``image-captions`` folder ``out``."""
    parts = blip_parts(model)
    image_key, text_key = parts.fusion.cfg.image, parts.fusion.cfg.text
    (out / "images").mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(options.seed)
    config = GenerationConfig(max_new_tokens=options.max_new_tokens, do_sample=True,
                              top_p=options.top_p, temperature=options.temperature)
    report = CapFiltReport()
    with (out / "captions.jsonl").open("w", encoding="utf-8") as fh:
        for start, items in _batches(data, options):
            images = [to_pil(it[image_key], 89_478_485, "image") for it in items]
            pixels = preprocess_images(model, images)
            synthetic = caption(model, pixels, config=config, generator=generator)
            web = [str(it[text_key]) for it in items]
            keep_web = itm_scores(model, pixels, model.preprocess(text_key, web))
            keep_syn = itm_scores(model, pixels, model.preprocess(text_key, synthetic))
            for i, item in enumerate(items):
                kept = [c for c, p in ((web[i], keep_web[i]), (synthetic[i], keep_syn[i]))
                        if float(p) >= options.threshold and c.strip()]
                _count(report, item, web[i] in kept, synthetic[i] in kept and bool(
                    synthetic[i].strip()))
                if kept:
                    name = f"images/{start + i:06d}.png"
                    images[i].save(out / name)
                    fh.write(json.dumps({"image": name, "caption": kept}) + "\n")
                if len(report.examples) < 5:
                    report.examples.append({"web": web[i], "web_kept": web[i] in kept,
                                            "synthetic": synthetic[i],
                                            "synthetic_kept": synthetic[i] in kept})
    return report


def _count(report: CapFiltReport, item: Any, web_kept: bool, synthetic_kept: bool) -> None:
    report.images += 1
    report.web_kept += web_kept
    report.synthetic_kept += synthetic_kept
    ok = item.get("caption_ok")
    if ok is None:
        return
    if not ok:
        report.wrong += 1
        report.wrong_removed += not web_kept
    elif not web_kept:
        report.right_removed += 1

"""``mmcore eval PRIOR_RUN --task prior``: how close the prior's sampled CLIP image
embeddings come to the true ones of the split's images (held-out colour-shape
combinations by default), beside two references:

- ``cosine/prior``: mean cosine(sampled image embedding from the caption, true image
  embedding);
- ``cosine/text``: mean cosine(text embedding, true image embedding): the caption's own
  CLIP embedding used as the image embedding (no prior);
- ``cosine/class_mean``: mean cosine(mean true image embedding of the item's class in this
  split, true image embedding): what a perfect class-conditional point estimate reaches.

``zero_shot/{prior,true}/{colour,shape,both}``: the sampled (and the true) image
embeddings classified by CLIP's text embeddings of all 36 "a {colour} {shape}" prompts.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import torch.nn.functional as F

from mmcore.commands import positive_int
from mmcore.data import Collator
from mmcore.tasks import TaskOptions
from mmcore_diffusion.tasks import accuracy
from mmcore_unclip.generate import prior_parts, sample_prior_from


class PriorTask:
    """``prior``: the prior's image embeddings against the true ones (see the module)."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--prior-steps", type=positive_int, default=50, metavar="N",
                            help="prior: denoising steps per sample (default 50)")

    def run(self, model: Any, data: Any, options: TaskOptions) -> dict[str, Any]:
        if data is None:
            raise ValueError("prior needs data with clip_text and clip_image (shapes-clip)")
        return prior_scores(model, data, steps=int(options.extra.get("prior_steps") or 50),
                            batch_size=options.batch_size)


@torch.no_grad()
def prior_scores(model: Any, data: Any, *, steps: int = 50, batch_size: int = 64,
                 seed: int = 0) -> dict[str, Any]:
    """The metrics of the module docstring over every item of ``data``."""
    fusion, _, text = prior_parts(model)
    image = fusion.cfg.image
    collate = Collator.for_model(model)
    names = list(getattr(getattr(data, "dataset", data), "class_names", []))
    if not names:
        raise ValueError("prior needs a dataset with class_names (shapes-clip)")
    prompts = model.preprocess(text, [f"a {name}" for name in names]).float()  # (36, D)
    true, pred, txt, labels = [], [], [], []
    for k, start in enumerate(range(0, len(data), batch_size)):
        items = [data[i] for i in range(start, min(start + batch_size, len(data)))]
        batch = collate(items)
        generator = torch.Generator().manual_seed(seed + k)
        pred.append(sample_prior_from(model, batch[text], steps=steps,
                                      generator=generator).float().cpu())
        true.append(batch[image].float())
        txt.append(batch[text].float())
        labels.append(torch.as_tensor(batch["label"]))
    t, p, c, y = torch.cat(true), torch.cat(pred), torch.cat(txt), torch.cat(labels)
    means = {int(k): F.normalize(t[y == k].mean(0), dim=0) for k in y.unique()}
    class_mean = torch.stack([means[int(k)] for k in y])
    out: dict[str, Any] = {
        "items": len(y), "prior_steps": steps,
        "cosine/prior": float((p * t).sum(-1).mean()),
        "cosine/text": float((c * t).sum(-1).mean()),
        "cosine/class_mean": float((class_mean * t).sum(-1).mean()),
    }
    shapes = len({n.split(" ")[1] for n in names})
    for label, emb in (("prior", p), ("true", t)):
        predicted = (emb @ prompts.T).argmax(-1)  # class indices, colour * shapes + shape
        scores = accuracy(predicted // shapes, predicted % shapes, y // shapes, y % shapes)
        out.update({f"zero_shot/{label}/{k}": scores[k] for k in ("colour", "shape", "both")})
    return out

"""How image codecs and text-to-image models are judged: the ``reconstruction`` and
``generation`` tasks of ``mmcore eval``.

``mmcore eval CODEC_RUN --task reconstruction`` encodes and decodes the evaluation split
with the model's codec (the ``latent`` tokenizer's ``codec``: any module with
``encode(images)`` and ``decode(latents)``, images ``(B, 3, H, W)`` in the preprocessor's
normalisation) and reports MSE and PSNR on [0, 1] images. What ``encode`` returns may be
a tensor or a distribution with ``mean`` (the KL autoencoder's, the VQ-VAE's quantised
latents) or ``mode()`` / ``sample()``. For a codec with discrete codes the task also
reports codebook size, codes used, usage and perplexity, counted over the whole split
(not averaged over batches): from the optional method ``codebook_counts(encoded) ->
Tensor (K,)`` (how often each of the K codes was used in that batch), else from
``encoded.codes`` (integer code ids) and the codec's ``codebook_size`` (mmcore_dalle's
``vq-vae``).

``mmcore eval MODEL --task generation --classifier JUDGE_RUN`` draws ``--k`` images for
each colour-shape prompt of the shapes data ("a red star", the data's plain caption),
classifies them with a judge (a trained ``shapes-classifier`` run: any model with
``classification`` objectives whose targets are ``colour`` and ``shape``) and reports
colour, shape and both-right accuracy, apart for the combinations the model trained on
(``seen``) and those its shapes data holds out (``held_out``), beside the judge's own
accuracy on fresh renders at the size the model draws.

The image-generator protocol. The task drives any text-to-image family (latent diffusion,
DALL-E, unCLIP, third-party) through the generators registered for ``mmcore generate``
(``register_generators``): the first one whose ``accepts(model)`` is true and that has an
``images`` method::

    class MyGenerator:
        def accepts(self, model) -> bool: ...
        def run(self, model, args) -> int: ...          # mmcore generate
        def images(self, model, prompts: list[str], *, steps: int | None = None,
                   guidance: float | None = None, seed: int = 0) -> Tensor:
            '''One image per prompt: (len(prompts), 3, H, W) float in [0, 1].
            steps / guidance None: the model's defaults (a family without denoising
            steps or guidance ignores them); the same seed gives the same images.'''

The task calls ``images`` once per prompt with the prompt repeated K times and
``seed + prompt index``. Images of any size are resized to the judge's input size by the
judge's own preprocessor (after rounding to 8 bits, as a saved PNG would be).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from mmcore.commands import positive_int
from mmcore.progress import Progress
from mmcore.tasks import TaskOptions
from mmcore_diffusion.generate import to_pil

#: the smallest MSE PSNR is taken at (identical images: 100 dB, not infinity)
MIN_MSE = 1e-10


@runtime_checkable
class ImageGenerator(Protocol):
    """A registered generator that can also hand images back (see the module docstring)."""

    def accepts(self, model: Any) -> bool: ...

    def images(self, model: Any, prompts: list[str], *, steps: int | None = None,
               guidance: float | None = None, seed: int = 0) -> Tensor: ...


# ---------------------------------------------------------------- reconstruction


def psnr_db(mse: float, peak: float = 1.0) -> float:
    """PSNR in dB of images whose values span ``peak`` (1 for [0, 1]) from their MSE."""
    return 10.0 * math.log10(peak * peak / max(mse, MIN_MSE))


class ReconstructionScore:
    """Running squared errors of [0, 1] images, in float64."""

    def __init__(self) -> None:
        self.squared, self.elements = 0.0, 0
        self.per_image: list[float] = []

    def add(self, original: Tensor, reconstruction: Tensor) -> None:
        """``original`` and ``reconstruction``: ``(B, C, H, W)`` in [0, 1]."""
        if original.shape != reconstruction.shape:
            raise ValueError(f"reconstruction {tuple(reconstruction.shape)} does not match "
                             f"the images {tuple(original.shape)}")
        err = (original.double() - reconstruction.double()).pow(2).flatten(1)  # (B, CHW)
        self.squared += float(err.sum())
        self.elements += err.numel()
        self.per_image += err.mean(1).tolist()

    def result(self) -> dict[str, Any]:
        """``mse`` over every pixel, ``psnr`` (dB) of that MSE, ``psnr_per_image`` (the
        mean of each image's PSNR) and ``images``."""
        if not self.per_image:
            raise ValueError("no images to score")
        mse = self.squared / self.elements
        return {"mse": mse, "psnr": psnr_db(mse), "images": len(self.per_image),
                "psnr_per_image": sum(psnr_db(m) for m in self.per_image) / len(self.per_image)}


def codec_of(model: Any) -> tuple[str, Any]:
    """(image modality, codec) of a model whose image tokenizer holds a codec; the
    ``reconstruction`` objective's modality first when there are several."""
    found = {name: tok.codec for name, tok in dict(getattr(model, "tokenizers", {})).items()
             if hasattr(getattr(tok, "codec", None), "decode")}
    for objective in dict(getattr(model, "objectives", {})).values():
        name = getattr(getattr(objective, "cfg", None), "image", None)
        if isinstance(name, str) and name in found:
            return name, found[name]
    if not found:
        raise ValueError("reconstruction needs a model whose image tokenizer holds a codec "
                         "(the 'latent' tokenizer, e.g. the ldm-tiny-codec preset)")
    name = sorted(found)[0]
    return name, found[name]


def latents_of(encoded: Any) -> Tensor:
    """What a codec's ``encode`` returned -> the latents to decode (a distribution's mean
    or mode, as in eval mode)."""
    if isinstance(encoded, Tensor):
        return encoded
    mean = getattr(encoded, "mean", None)
    if isinstance(mean, Tensor):
        return mean
    for method in ("mode", "sample"):
        if callable(getattr(encoded, method, None)):
            value = getattr(encoded, method)()
            if isinstance(value, Tensor):
                return value
    raise ValueError(f"cannot take latents from the codec's encode output "
                     f"({type(encoded).__name__}): give a tensor, or an object with a 'mean' "
                     "tensor or a mode() method")


def normalisation(model: Any, modality: str) -> tuple[Tensor, Tensor]:
    """The image preprocessor's ``mean`` and ``std`` as ``(1, 3, 1, 1)`` tensors."""
    cfg = getattr(model.preprocessors.get(modality), "cfg", None)
    mean, std = getattr(cfg, "mean", None), getattr(cfg, "std", None)
    if mean is None or std is None:
        raise ValueError(f"modality {modality!r} has no image preprocessor with mean and std")
    return (torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1),
            torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))


def code_counts(codec: Any, encoded: Any) -> Tensor | None:
    """How often each code of a discrete codec was used in one batch ``(K,)``; None for a
    continuous codec (see the module docstring)."""
    if callable(getattr(codec, "codebook_counts", None)):
        return torch.as_tensor(codec.codebook_counts(encoded)).cpu()
    codes, size = getattr(encoded, "codes", None), getattr(codec, "codebook_size", None)
    if isinstance(codes, Tensor) and isinstance(size, int):
        return torch.bincount(codes.reshape(-1).long().cpu(), minlength=size)
    return None


def codebook_stats(counts: Tensor) -> dict[str, Any]:
    """Codebook ``(K,)`` use counts -> size, codes used, usage share and perplexity
    (exp of the entropy of the use distribution; K when all codes are used equally)."""
    counts = counts.double()
    p = counts / counts.sum().clamp_min(1)
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    used = int((counts > 0).sum())
    return {"codebook_size": len(counts), "codebook_used": used,
            "codebook_usage": used / len(counts), "perplexity": float(entropy.exp())}


class ReconstructionTask:
    """``reconstruction``: MSE and PSNR of a codec's decoded images on [0, 1]."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """No options of its own (``--split``, ``--limit``, ``--batch-size`` apply)."""

    def run(self, model: Any, data: Any, options: TaskOptions) -> dict[str, Any]:
        if data is None:
            raise ValueError("reconstruction needs images: the spec's data or --data")
        modality, codec = codec_of(model)
        mean, std = normalisation(model, modality)
        score, counts = ReconstructionScore(), None
        count = len(data) if options.limit is None else min(options.limit, len(data))
        with Progress(count, desc="reconstruction", unit="image",
                      enabled=options.progress) as bar:
            for start in range(0, count, options.batch_size):
                rows = range(start, min(start + options.batch_size, count))
                x = model.preprocess(modality, [data[i][modality] for i in rows])
                device = next(iter(codec.parameters()), torch.empty(0)).device
                encoded = codec.encode(x.to(device))
                recon = codec.decode(latents_of(encoded)).float().cpu()
                original = (x.float().cpu() * std + mean).clamp(0, 1)
                score.add(original, (recon * std + mean).clamp(0, 1))
                used = code_counts(codec, encoded)
                if used is not None:
                    counts = used if counts is None else counts + used
                bar.update(len(rows))
        result = {"task": "reconstruction", "modality": modality, **score.result()}
        if counts is not None:
            result.update(codebook_stats(counts))
        return result


# ---------------------------------------------------------------- generation


def image_generator(model: Any) -> ImageGenerator:
    """The first registered generator that accepts ``model`` and has ``images``."""
    from mmcore.plugins import get_registry

    names = []
    for entry in get_registry().list("generator"):
        generator = entry.factory()
        if callable(getattr(generator, "images", None)):
            names.append(entry.name)
            if generator.accepts(model):
                return generator
    raise ValueError("no registered image generator accepts this model (generators with "
                     f"images(): {', '.join(names) or 'none'})")


def judge_heads(judge: Any) -> tuple[str, str, str]:
    """(image modality, colour head, shape head) of a judge: the heads its
    ``classification`` objectives train on the ``colour`` and ``shape`` targets."""
    heads: dict[str, str] = {}
    for objective in dict(getattr(judge, "objectives", {})).values():
        cfg = getattr(objective, "cfg", None)
        head, target = getattr(cfg, "head", None), getattr(cfg, "target", None)
        if isinstance(head, str) and target in ("colour", "shape") and head in judge.heads:
            heads[str(target)] = head
    if set(heads) != {"colour", "shape"} or len(judge.modalities) != 1:
        raise ValueError("the classifier must be an image model with classification heads "
                         "for the 'colour' and 'shape' targets (the shapes-classifier preset)")
    return judge.modalities[0], heads["colour"], heads["shape"]


@torch.no_grad()
def classify(judge: Any, images: Sequence[Any]) -> tuple[Tensor, Tensor]:
    """Images (PIL, or ``(3, H, W)`` tensors in [0, 1], rounded to 8 bits first) ->
    predicted (colour, shape) indices ``(N,)`` each."""
    modality, colour, shape = judge_heads(judge)
    pils = [to_pil(im) if isinstance(im, Tensor) else im for im in images]
    out = judge({modality: judge.preprocess(modality, pils)}).heads
    return out[colour].argmax(-1).cpu(), out[shape].argmax(-1).cpu()


def accuracy(colour_pred: Tensor, shape_pred: Tensor, colour: Tensor,
             shape: Tensor) -> dict[str, Any]:
    """``colour``, ``shape`` and ``both`` accuracy of predicted against true indices."""
    if len(colour) == 0:
        return {"colour": None, "shape": None, "both": None, "images": 0}
    c, s = colour_pred == colour, shape_pred == shape
    n = len(colour)
    return {"colour": int(c.sum()) / n, "shape": int(s.sum()) / n,
            "both": int((c & s).sum()) / n, "images": n}


def shapes_prompts() -> list[tuple[str, int, int, int]]:
    """(prompt, class index, colour index, shape index) for every colour-shape
    combination of the shapes data, in class-index order (colour * shapes + shape)."""
    from mmcore_shapes.dataset import caption
    from mmcore_shapes.render import COLOURS, SHAPES

    return [(caption(c, s), i * len(SHAPES) + j, i, j)
            for i, c in enumerate(COLOURS) for j, s in enumerate(SHAPES)]


def held_out_classes(data: Any) -> list[int] | None:
    """The class indices the model's shapes data keeps out of training; None when the
    data is not the shapes data (nothing known)."""
    data = getattr(data, "dataset", data)  # under --limit: the dataset it cuts
    cfg = getattr(data, "cfg", None)
    per_colour = getattr(cfg, "holdout_per_colour", None)
    if not isinstance(per_colour, int):
        return None
    if getattr(cfg, "all_combinations", False):
        return []
    from mmcore_shapes.dataset import held_out

    return held_out(per_colour)


def judge_accuracy(judge: Any, size: int, count: int, batch_size: int) -> dict[str, Any]:
    """The judge's accuracy on ``count`` fresh renders of all combinations at ``size`` px
    (the ``eval`` stream of the shapes data, which the judge never trains on)."""
    from mmcore_shapes.dataset import ShapesConfig, ShapesDataset
    from mmcore_shapes.render import SHAPES

    data = ShapesDataset(ShapesConfig(image_size=size, eval_size=count, split="eval",
                                      factors=True, all_combinations=True))
    preds: list[tuple[Tensor, Tensor]] = []
    for start in range(0, count, batch_size):
        preds.append(classify(judge, [data[i]["image"]
                                      for i in range(start, min(start + batch_size, count))]))
    truth = [divmod(data[i]['label'], len(SHAPES)) for i in range(count)]
    return accuracy(torch.cat([p[0] for p in preds]), torch.cat([p[1] for p in preds]),
                    torch.tensor([t[0] for t in truth]), torch.tensor([t[1] for t in truth]))


def generation_scores(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-image records ``{colour, shape, colour_pred, shape_pred, held_out}`` ->
    accuracy for ``seen``, ``held_out`` and ``all`` images."""
    def part(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        def col(key: str) -> Tensor:
            return torch.tensor([r[key] for r in rows], dtype=torch.long)
        return accuracy(col("colour_pred"), col("shape_pred"), col("colour"), col("shape"))

    return {"seen": part([r for r in records if not r["held_out"]]),
            "held_out": part([r for r in records if r["held_out"]]),
            "all": part(records)}


def evaluate_generation(model: Any, generator: Any, judge: Any, *, k: int = 8,
                        steps: int | None = None, guidance: float | None = None,
                        seed: int = 0, held_out: Sequence[int] | None = None,
                        limit: int | None = None, judge_items: int = 360,
                        progress: bool = True) -> dict[str, Any]:
    """Generate ``k`` images per colour-shape prompt with ``generator.images``, judge
    them, and score (see :func:`generation_scores`). ``held_out``: the class indices
    (colour * shapes + shape) the model never trained on; None: unknown (all count as seen).
    ``limit``: the first N prompts only. ``judge_items``: fresh renders the judge's own
    accuracy is measured on, at the generated size (0: not measured)."""
    prompts = shapes_prompts()[:limit]
    unseen = set(held_out or [])
    records: list[dict[str, Any]] = []
    per_prompt: dict[str, float] = {}
    size = 0
    with Progress(len(prompts), desc="generation", unit="prompt", enabled=progress) as bar:
        for index, (prompt, label, colour, shape) in enumerate(prompts):
            images = generator.images(model, [prompt] * k, steps=steps, guidance=guidance,
                                      seed=seed + index)
            if images.dim() != 4 or images.shape[0] != k or images.shape[1] != 3:
                raise ValueError(f"the generator returned images {tuple(images.shape)}; "
                                 f"expected ({k}, 3, H, W)")
            size = int(images.shape[-1])
            colour_pred, shape_pred = classify(judge, list(images.float().clamp(0, 1)))
            rows = [{"colour": colour, "shape": shape, "colour_pred": int(c),
                     "shape_pred": int(s), "held_out": label in unseen}
                    for c, s in zip(colour_pred, shape_pred, strict=True)]
            records += rows
            per_prompt[prompt] = sum(r["colour_pred"] == colour and r["shape_pred"] == shape
                                     for r in rows) / k
            bar.update(1)
    return {"task": "generation", **generation_scores(records),
            "classifier_on_renders": judge_accuracy(judge, size, judge_items, 64)
            if judge_items > 0 and size > 0 else None,
            "prompts": len(prompts), "images_per_prompt": k, "image_size": size,
            "held_out_known": held_out is not None,
            "held_out_prompts": [p for (p, label, _, _) in prompts if label in unseen],
            "both_per_prompt": per_prompt}


class GenerationTask:
    """``generation``: colour/shape accuracy of a text-to-image model's images, judged by
    a trained ``shapes-classifier``, on seen and held-out combinations."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--classifier", metavar="RUN",
                            help="generation: the judge, a trained shapes-classifier run or "
                                 "checkpoint")
        parser.add_argument("--k", type=positive_int, default=8, metavar="K",
                            help="generation: images per prompt (default 8)")
        parser.add_argument("--steps", type=positive_int, default=None, metavar="N",
                            help="generation: sampling steps (default: the generator's own)")
        parser.add_argument("--guidance", type=float, default=None, metavar="SCALE",
                            help="generation: guidance scale (default: the model's own)")
        parser.add_argument("--seed", type=int, default=0,
                            help="generation: seed of prompt 0; prompt i uses seed + i")

    def run(self, model: Any, data: Any, options: TaskOptions) -> dict[str, Any]:
        extra = options.extra
        judge = extra.get("classifier")
        if judge is None:
            raise ValueError("generation needs --classifier RUN, a trained judge (mmcore "
                             "train shapes-classifier --out runs/shapes-classifier)")
        if isinstance(judge, (str, Path)):
            from mmcore.evaluate import resolve_model

            if not Path(judge).exists():
                raise ValueError(f"--classifier: no run or checkpoint at {judge}")
            judge = resolve_model(judge, options.device)
        judge.eval()
        k = int(extra.get("k") or 8)
        steps = extra.get("steps")
        if k < 1 or (steps is not None and int(steps) < 1):
            raise ValueError("--k and --steps must be positive")
        held = held_out_classes(data)
        result = evaluate_generation(
            model, image_generator(model), judge, k=k,
            steps=None if steps is None else int(steps), guidance=extra.get("guidance"),
            seed=int(extra.get("seed") or 0), held_out=held, limit=options.limit,
            progress=options.progress)
        if held is None:
            result["note"] = ("the model's data is not the shapes data: no combination is "
                              "known to be held out, all count as seen")
        return result

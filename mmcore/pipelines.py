"""One-line inference: ``mmcore.pipeline(task, model)(inputs)`` -> plain Python results.

Task names follow transformers' pipelines where one exists. Inputs are raw: file paths,
PIL images, numpy arrays or tensors, strings. ``model`` is anything :func:`mmcore.load`
takes (a checkpoint, a run folder, ``hf://ORG/NAME``), a foreign folder a converter
imports, a preset name (built with random weights: for trying the plumbing), or a model.

- ``zero-shot-image-classification`` / ``zero-shot-audio-classification``:
  ``pipe(x, candidate_labels=[...])`` -> ``[{"label", "score"}, ...]``, best first
  (scores are a softmax over the labels), from any contrastive model (CLIP, CLAP); audio
  is a path or a ``(waveform, sample_rate)`` pair;
- ``image-text-retrieval``: ``pipe(images=[...], texts=[...])`` -> ranked matches both ways;
- ``automatic-speech-recognition`` (Whisper), ``image-captioning`` (alias ``image-to-text``;
  BLIP), ``visual-question-answering`` (LLaVA), ``text-generation`` (LLaMA family) and
  ``text-to-image`` (latent diffusion) drive the family's own verb (``transcribe``,
  ``caption``, ``generate``) with ``--json``, so a pipeline and the command line give the
  same answers. A task whose plugin is not loaded is an error naming what is missing.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmcore.errors import MMCoreError

#: transformers' name -> mmcore's, where they differ
ALIASES = {"image-to-text": "image-captioning"}


@dataclass(frozen=True)
class TaskInfo:
    """How a task runs: its function, and the verb (and plugin) it needs, if any."""

    run: Callable[..., Any]
    verb: str | None = None
    provider: str = ""
    summary: str = ""


def pipeline(task: str, model: Any, *, device: str = "cpu") -> Pipeline:
    """A callable that runs ``task`` with ``model`` on raw inputs (see the module doc)."""
    name = ALIASES.get(task, task)
    if name not in TASKS:
        from mmcore.errors import suggest

        raise MMCoreError(f"unknown pipeline task {task!r}.{suggest(task, TASKS)} Tasks: "
                          f"{', '.join(TASKS)}")
    info = TASKS[name]
    if info.verb is not None:
        _require_verb(name, info)
    return Pipeline(name, info, model, device)


class Pipeline:
    """``pipe(inputs, **options)``; ``pipe.model`` is the loaded model (lazily for verbs)."""

    def __init__(self, task: str, info: TaskInfo, model: Any, device: str) -> None:
        self.task, self.info, self.device = task, info, device
        self.source = model
        self._model = None if info.verb is not None else _load(model, device)

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = _load(self.source, self.device)
        return self._model

    def __call__(self, *inputs: Any, **options: Any) -> Any:
        if self.info.verb is None:
            return self.info.run(self.model, *inputs, **options)
        with tempfile.TemporaryDirectory(prefix="mmcore-pipeline-") as tmp:
            source = _model_path(self.source, Path(tmp))
            return self.info.run(source, Path(tmp), *inputs, **options)

    def __repr__(self) -> str:
        return f"Pipeline({self.task!r})"


# -- models --------------------------------------------------------------------------------


def _load(model: Any, device: str) -> Any:
    """A model object from anything :func:`pipeline` takes, in eval mode."""
    import mmcore
    from mmcore.commands import load_any_model
    from mmcore.hub import is_hub_name

    if not isinstance(model, (str, Path)):
        return model.eval()
    if is_hub_name(model):
        return mmcore.load(str(model), device=device)
    if Path(model).exists():
        return load_any_model(model).to(device).eval()
    return mmcore.build(str(model), device=device)  # a preset name


def _model_path(model: Any, tmp: Path) -> str:
    """A path a verb's MODEL argument takes: the source itself, or the model saved."""
    from mmcore.hub import is_hub_name, resolve

    if isinstance(model, (str, Path)) and is_hub_name(model):
        return str(resolve(model))
    if isinstance(model, (str, Path)) and Path(model).exists():
        return str(model)
    import mmcore

    built = model if not isinstance(model, (str, Path)) else mmcore.build(str(model))
    return str(mmcore.save(built, tmp / "model.safetensors"))


# -- embedding tasks (any contrastive model) -------------------------------------------------


def _batch(inputs: Any) -> tuple[list[Any], bool]:
    """(items, whether one item was given). A list is a batch; a tuple is one item (an
    audio ``(waveform, rate)`` pair)."""
    if isinstance(inputs, list):
        return list(inputs), False
    return [inputs], True


def _raw(item: Any) -> Any:
    """A path string stays a Path for the preprocessors (which read files)."""
    return Path(item) if isinstance(item, str) else item


def _modality(model: Any, wanted: str, other: str = "text") -> tuple[str, str]:
    names = list(getattr(model, "modalities", []))
    if wanted not in names or other not in names:
        raise MMCoreError(f"this task needs a model with {wanted!r} and {other!r} modalities; "
                          f"this one has {', '.join(names) or 'none'}")
    return wanted, other


def _embed(model: Any, modality: str, items: Sequence[Any]) -> Any:
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        raw = list(items) if modality == "text" else [_raw(i) for i in items]
        inputs = model.preprocess(modality, raw)
        return F.normalize(model.embed(modality, inputs).float(), dim=-1)  # (N, E)


def _zero_shot(modality: str) -> Callable[..., Any]:
    def run(model: Any, inputs: Any, candidate_labels: Sequence[str],
            hypothesis_template: str = "a photo of {}.") -> Any:
        """Scores of ``candidate_labels`` (prompted by the template) for each input."""
        if not candidate_labels:
            raise MMCoreError("candidate_labels is empty: name the classes to choose among")
        items, single = _batch(inputs)
        kind, text = _modality(model, modality)
        prompts = [hypothesis_template.format(label) for label in candidate_labels]
        scale = float(getattr(model.fusion, "logit_scale", _Exp(100.0)).exp())
        probs = (scale * _embed(model, kind, items) @ _embed(model, text, prompts).t()).softmax(-1)
        results = [sorted(({"label": label, "score": float(p)} for label, p in
                           zip(candidate_labels, row, strict=True)),
                          key=_by_score) for row in probs]
        return results[0] if single else results

    return run


def _by_score(result: dict[str, Any]) -> float:
    return -float(result["score"])


class _Exp:
    """A fixed logit scale for models without a learned one (``exp()`` gives it back)."""

    def __init__(self, value: float) -> None:
        self.value = value

    def exp(self) -> float:
        return self.value


def _retrieval(model: Any, images: Sequence[Any], texts: Sequence[str],
               top_k: int | None = None) -> dict[str, Any]:
    """Both directions ranked by cosine similarity: each image's texts and each text's
    images (by index), best first, at most ``top_k`` each."""
    image, text = _modality(model, "image")
    scores = _embed(model, image, list(images)) @ _embed(model, text, list(texts)).t()  # (I, T)
    k_texts, k_images = min(top_k or len(texts), len(texts)), min(top_k or len(images),
                                                                   len(images))
    to_text = [[{"text": texts[int(j)], "index": int(j), "score": float(row[j])}
                for j in row.argsort(descending=True)[:k_texts]] for row in scores]
    to_image = [[{"index": int(i), "score": float(col[i])}
                 for i in col.argsort(descending=True)[:k_images]] for col in scores.t()]
    return {"image_to_text": to_text, "text_to_image": to_image}


# -- tasks that drive a family's verb -------------------------------------------------------


def _require_verb(task: str, info: TaskInfo) -> None:
    from mmcore.plugins import get_registry

    registry = get_registry()
    available = (registry.names("generator") if info.verb == "generate"
                 else [n for n in registry.names("command") if n == info.verb])
    if available:
        return
    raise MMCoreError(f"pipeline {task!r} needs the {info.verb!r} verb of {info.provider}, "
                      "which is not loaded (mmcore plugins shows what is)")


def _run_verb(argv: list[str], *, as_json: bool = True) -> Any:
    """Run ``mmcore ARGV --json`` in this process; its JSON output, parsed (``as_json``
    False: without --json, its printed text)."""
    from mmcore.cli import build_parser

    parser = build_parser()
    try:
        args = parser.parse_args([*argv, "--json"] if as_json else argv)
    except SystemExit:
        raise MMCoreError(f"invalid options for mmcore {argv[0]}: {' '.join(argv[1:])}") from None
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        args.func(args)
    return json.loads(out.getvalue()) if as_json else out.getvalue()


def _files(items: Sequence[Any], tmp: Path, suffix: str) -> list[str]:
    """Paths for raw inputs: paths as they are; images and waveforms written to ``tmp``."""
    paths = []
    for i, item in enumerate(items):
        if isinstance(item, (str, Path)):
            paths.append(str(item))
            continue
        target = tmp / f"input-{i}{suffix}"
        _write(item, target)
        paths.append(str(target))
    return paths


def _write(item: Any, target: Path) -> None:
    import numpy as np
    from PIL import Image

    if isinstance(item, Image.Image):
        item.save(target)
        return
    if isinstance(item, tuple) and target.suffix == ".wav":  # (waveform, sample rate)
        _write_wav(np.asarray(item[0]), target, int(item[1]))
        return
    array = np.asarray(item.detach().cpu() if hasattr(item, "detach") else item)
    if target.suffix == ".wav":
        _write_wav(array, target)
    else:
        Image.fromarray(array.astype(np.uint8)).save(target)


def _write_wav(samples: Any, target: Path, rate: int = 16000) -> None:
    """A float waveform in [-1, 1] at 16 kHz (Whisper's rate) as 16-bit PCM."""
    import wave

    import numpy as np

    pcm = (np.clip(np.asarray(samples, dtype=np.float64).reshape(-1), -1, 1) * 32767)
    with wave.open(str(target), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.astype("<i2").tobytes())


def _speech(model: str, tmp: Path, inputs: Any, **options: Any) -> Any:
    """``{"text": ...}`` per audio input: a WAV path, a ``(waveform, rate)`` pair, or a
    bare float waveform at 16 kHz."""
    items, single = _batch(inputs)
    argv = ["transcribe", model, *_files(items, tmp, ".wav"), *_options(options)]
    results = [{"text": r["text"].strip(), **{k: v for k, v in r.items()
                                              if k not in ("audio", "text")}}
               for r in _run_verb(argv)]
    return results[0] if single else results


def _captions(model: str, tmp: Path, inputs: Any, **options: Any) -> Any:
    """``{"generated_text": caption}`` per image."""
    items, single = _batch(inputs)
    argv = ["caption", model, *_files(items, tmp, ".png"), *_options(options)]
    results = [{"generated_text": r["caption"]} for r in _run_verb(argv)]
    return results[0] if single else results


def _vqa(model: str, tmp: Path, image: Any, question: str, **options: Any) -> dict[str, str]:
    """``{"answer": ...}`` to ``question`` about ``image`` (``<image>`` is put in front of
    the question unless it holds one)."""
    prompt = question if "<image>" in question else f"<image> {question}"
    argv = ["generate", model, "--prompt", prompt, "--image", _files([image], tmp, ".png")[0],
            "--no-stream", *_options(options)]
    return {"answer": _run_verb(argv)[0]["answer"]}


def _text(model: str, tmp: Path, inputs: Any, **options: Any) -> Any:
    """``{"generated_text": ...}`` per prompt: the continuation, without the prompt."""
    prompts, single = _batch(inputs)
    argv = ["generate", model, *[a for p in prompts for a in ("--prompt", p)], "--no-stream",
            *_options(options)]
    results = [{"generated_text": r["text"]} for r in _run_verb(argv)]
    return results if not single else results[0] if len(results) == 1 else results


def _images(model: str, tmp: Path, inputs: Any, **options: Any) -> Any:
    """PIL images, one per prompt (``n``: several per prompt, as a list)."""
    from PIL import Image

    prompts, single = _batch(inputs)
    out = tmp / "images"
    argv = ["generate", model, *[a for p in prompts for a in ("--prompt", p)], "--out", str(out),
            *_options(options)]
    _run_verb(argv, as_json=False)
    files = sorted(p for p in out.glob("*.png") if p.name != "grid.png")
    images = [Image.open(p).convert("RGB") for p in files]
    return images[0] if single and len(images) == 1 else images


def _options(options: dict[str, Any]) -> list[str]:
    """``max_new_tokens=8`` -> ``["--max-new-tokens", "8"]``; True flags have no value."""
    argv: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not None and value is not False:
            argv += [flag, str(value)]
    return argv


TASKS: dict[str, TaskInfo] = {
    "zero-shot-image-classification": TaskInfo(_zero_shot("image"),
                                               summary="any contrastive image-text model"),
    "zero-shot-audio-classification": TaskInfo(_zero_shot("audio"),
                                               summary="any contrastive audio-text model"),
    "image-text-retrieval": TaskInfo(_retrieval, summary="any contrastive image-text model"),
    "automatic-speech-recognition": TaskInfo(_speech, "transcribe", "mmcore_whisper"),
    "image-captioning": TaskInfo(_captions, "caption", "mmcore_blip"),
    "visual-question-answering": TaskInfo(_vqa, "generate", "mmcore_llava"),
    "text-generation": TaskInfo(_text, "generate", "mmcore_llama"),
    "text-to-image": TaskInfo(_images, "generate", "mmcore_diffusion"),
}

"""Checks that go beyond one component's own params: training options, neighbouring
components against each other, the data against the modalities, and parameters no
objective reaches. ``mmcore validate`` runs them all and reports every problem at once
(:func:`validate_source`); ``mmcore train`` runs :func:`check` before anything is built.

Problems come in rounds: YAML, then structure and params (:mod:`mmcore.spec`), then the
checks here. Each round checks whatever the earlier ones left intact, so one run reports
everything that can be known.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmcore.errors import RegistryError, SpecError, SpecIssue, suggest
from mmcore.train_spec import BUILTIN_LOGGERS

if TYPE_CHECKING:
    from mmcore.model import MultimodalModel
    from mmcore.registry import Registry
    from mmcore.spec import ComponentRef, ModelSpec, SpecCheck

#: Attributes a built preprocessor and the tokenizer after it may both declare, and how the
#: preprocessor's value (what it emits) must relate to the tokenizer's (what it accepts):
#: ``"<="`` or ``"=="``. ``vocab_size`` on a preprocessor means its ids are below it
#: (``id_limit`` is read as a synonym). An attribute either side lacks, or sets to None,
#: is not compared.
AGREEMENTS: dict[str, str] = {"context_length": "<=", "vocab_size": "<=",
                              "image_size": "==", "n_mels": "=="}
_ALIASES = {"vocab_size": ("vocab_size", "id_limit")}

#: Models up to this many parameters are built for real on the CPU to find parameters no
#: objective reaches; larger ones try the meta device (which some forwards cannot run on).
REACH_CPU_LIMIT = 50_000_000

#: Top-level keys whose problems do not stop the model being built and cross-checked.
_NON_MODEL_KEYS = ("train", "data", "name", "description", "metadata", "modality_dropout")


@dataclass
class Report:
    """Everything :func:`validate_source` found about one spec."""

    name: str
    #: where the spec came from (a path, ``preset NAME``), for error headings
    source: str | None = None
    errors: list[SpecIssue] = field(default_factory=list)
    warnings: list[SpecIssue] = field(default_factory=list)
    #: checks that could not run, and why
    notes: list[str] = field(default_factory=list)
    parameters: int | None = None


# ----------------------------------------------------------------------------- train options


def training_problems(spec: ModelSpec, registry: Registry | None = None) -> list[SpecIssue]:
    """What is wrong with ``train.freeze``, ``train.activation_checkpointing``,
    ``train.warmup_steps``, and the paths, loggers and evaluation settings of the train
    options (:func:`option_problems`)."""
    problems = []
    known = spec.module_paths()
    for i, path in enumerate(spec.train.freeze):
        if path not in known:
            problems.append(SpecIssue(f"train.freeze.{i}", _unknown_path(path, known)))
    checkpointed = spec.train.activation_checkpointing
    if isinstance(checkpointed, list):
        encoded = [m for m, ms in spec.modalities.items() if ms.encoder is not None]
        for i, name in enumerate(checkpointed):
            if name not in encoded:
                problems.append(SpecIssue(f"train.activation_checkpointing.{i}",
                                          f"{name!r} is not a modality with an encoder; "
                                          f"those are {encoded}"))
    train = spec.train
    if "warmup_steps" in train.model_fields_set and train.warmup_steps > train.steps:
        problems.append(SpecIssue("train.warmup_steps",
                                  f"{train.warmup_steps} exceeds train.steps {train.steps}; "
                                  "the learning rate would never finish warming up"))
    return problems + option_problems(spec, registry)


def _unknown_path(path: str, known: list[str]) -> str:
    hint = suggest(path, known) or f" Paths: {', '.join(known)}"
    return f"unknown component {path!r}.{hint}"


def option_problems(spec: ModelSpec, registry: Registry | None = None) -> list[SpecIssue]:
    """``train.lr_by_component`` and ``train.lora`` name component paths; loggers are
    built in or registered (installed); keep_best and early stopping need ``eval_every``
    and an ``eval/`` metric."""
    train, known = spec.train, spec.module_paths()
    problems = [SpecIssue(f"train.lr_by_component.{path}", _unknown_path(path, known))
                for path in train.lr_by_component if path not in known]
    targets = train.lora.targets if train.lora is not None else []
    problems += [SpecIssue(f"train.lora.targets.{i}.path", _unknown_path(t.path, known))
                 for i, t in enumerate(targets) if t.path not in known]
    problems += _logger_problems(spec, registry)
    watched = [("train.keep_best", train.keep_best)]
    if train.early_stopping is not None:
        watched.append(("train.early_stopping.metric", train.early_stopping.metric))
    for key, metric in watched:
        if metric is None:
            continue
        if train.eval_every is None:
            problems.append(SpecIssue(key, "needs train.eval_every (evaluations to compare)"))
        if not metric.startswith("eval/"):
            problems.append(SpecIssue(key, f"{metric!r} is not an evaluation metric; those "
                                           "start with eval/, e.g. eval/loss, eval/accuracy"))
    return problems


def _logger_problems(spec: ModelSpec, registry: Registry | None) -> list[SpecIssue]:
    """Each ``train.loggers`` name is built in or registered; a registered one whose
    package is missing says what to install."""
    reg = _registry(registry)
    known = [*BUILTIN_LOGGERS, *reg.names("logger"), *(n for k, n in reg.unavailable
                                                        if k == "logger")]
    problems = []
    for i, name in enumerate(spec.train.loggers):
        if name in BUILTIN_LOGGERS:
            continue
        try:
            reg.get("logger", name)
        except RegistryError as exc:
            message = str(exc) if name in known else \
                f"unknown logger {name!r}.{suggest(name, known)} Loggers: {', '.join(known)}"
            problems.append(SpecIssue(f"train.loggers.{i}", message))
    return problems


def _registry(registry: Registry | None) -> Registry:
    if registry is not None:
        return registry
    from mmcore.plugins import get_registry

    return get_registry()


# ----------------------------------------------------------------------------- neighbours


def pipeline_problems(spec: ModelSpec, registry: Registry | None = None,
                      skip: Iterable[str] = ()) -> list[SpecIssue]:
    """Each modality's preprocessor against its tokenizer, on whatever :data:`AGREEMENTS`
    attributes both declare. Components at a path in ``skip`` (already reported) and those
    that fail to build (the full build reports them) are left out."""
    skipped = set(skip)
    problems: list[SpecIssue] = []
    for name, modality in spec.modalities.items():
        base = f"modalities.{name}"
        pre_ref, tok_ref = modality.preprocessor, modality.tokenizer
        if pre_ref is None or {f"{base}.preprocessor", f"{base}.tokenizer"} & skipped:
            continue
        pre = _built(registry, "preprocessor", pre_ref, name, "cpu")
        tok = _built(registry, "tokenizer", tok_ref, name, "meta")
        if pre is not None and tok is not None:
            problems += _agreement(f"{base}.tokenizer", tok_ref, pre, tok, pre_ref.type)
    return problems


def _built(registry: Registry | None, kind: str, ref: ComponentRef, modality: str,
           device: str) -> Any:
    """One of ``modality``'s components built alone on ``device`` (None where it cannot be)."""
    import torch

    from mmcore.builder import BuildContext, make_component
    from mmcore.kernels import KernelSet
    from mmcore.plugins import get_registry

    try:
        with torch.device(device):
            return make_component(registry or get_registry(), kind, ref,
                                  BuildContext(kernels=KernelSet(), modality=modality))
    except Exception:  # reported by the full build, not here
        return None


def _declared(obj: Any, attr: str) -> int | None:
    for name in _ALIASES.get(attr, (attr,)):
        value = getattr(obj, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _agreement(path: str, ref: ComponentRef, pre: Any, tok: Any,
               pre_type: str) -> list[SpecIssue]:
    """Issues at the tokenizer's ``path`` where it disagrees with its preprocessor."""
    problems = []
    for attr, relation in AGREEMENTS.items():
        emits, accepts = _declared(pre, attr), _declared(tok, attr)
        if emits is None or accepts is None:
            continue
        if (relation == "<=" and emits <= accepts) or (relation == "==" and emits == accepts):
            continue
        where = f"{path}.{attr}" if attr in ref.params else path
        problems.append(SpecIssue(where, _disagreement(attr, emits, accepts, pre_type)))
    return problems


def _disagreement(attr: str, emits: int, accepts: int, pre_type: str) -> str:
    pre = f"preprocessor {pre_type!r}"
    if attr == "vocab_size":
        return (f"vocab_size {accepts} is too small for {pre}, which emits ids up to "
                f"{emits - 1}; it needs vocab_size >= {emits}")
    if AGREEMENTS[attr] == "<=":
        return (f"{attr} {accepts} is smaller than the {attr} {emits} of {pre}; "
                f"raise it to at least {emits}")
    return f"{attr} {accepts} does not match the {attr} {emits} of {pre}"


# ----------------------------------------------------------------------------- data


def read_item(spec: ModelSpec, registry: Registry | None = None,
              dataset: Any = None) -> tuple[Mapping[str, Any] | None, list[SpecIssue]]:
    """The first training item of ``dataset`` (default: the spec's ``data:``) and the
    problems with it: a dataset that cannot be built or read, or keys that do not match
    the spec's modalities. (None, []) where the spec names no data."""
    if dataset is None and spec.data is None:
        return None, []
    from mmcore.data import TRAIN, is_stream, open_train_data

    try:
        if dataset is None:
            assert spec.data is not None
            dataset = open_train_data(spec.data, TRAIN, registry)
        item = next(iter(dataset)) if is_stream(dataset) else dataset[0]
    except Exception as exc:  # any failure to read data is a spec issue
        return None, [SpecIssue("data", f"cannot read the dataset: {_one_line(exc)}")]
    if not isinstance(item, Mapping):
        return None, [SpecIssue("data", f"the dataset yields {type(item).__name__} items, "
                                        "not mappings of modality name -> raw input")]
    size = None if is_stream(dataset) else len(dataset)
    return item, _key_problems(spec, item) + _size_problems(spec, size)


def _size_problems(spec: ModelSpec, size: int | None) -> list[SpecIssue]:
    """A batch larger than a map-style dataset would repeat samples within one batch."""
    if size is None or size >= spec.train.batch_size:
        return []
    return [SpecIssue("train.batch_size", f"{spec.train.batch_size} is more than the {size} "
                      "training samples of the dataset: every batch would repeat samples "
                      "(and a contrastive loss would see them as false negatives); lower "
                      "train.batch_size")]


def _key_problems(spec: ModelSpec, item: Mapping[str, Any]) -> list[SpecIssue]:
    keys = sorted(str(k) for k in item)
    sources = spec.sources()
    missing = list(dict.fromkeys(sources[m] for m in spec.modalities if sources[m] not in item))
    if not missing:
        return []
    hints = []
    for name in missing:
        near = suggest(name, [k for k in keys if k not in spec.modalities], n=1)
        if near:
            hints.append(f"rename modality {name!r} to {near.split(' ')[-1].rstrip('?')}?")
    hint = " ".join(hints) or f"no item has {', '.join(map(repr, missing))}"
    views = [f"{m} reads {k!r}" for m, k in sorted(sources.items()) if k != m]
    read = f" ({', '.join(views)})" if views else ""
    return [SpecIssue("data", f"the dataset yields keys {keys} but the spec's modalities are "
                              f"{sorted(spec.modalities)}{read}; {hint}")]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < 300 else text[:297] + "..."


# ----------------------------------------------------------------------------- the API


def spec_problems(spec: ModelSpec, registry: Registry | None = None, *, data: bool = False,
                  dataset: Any = None) -> list[SpecIssue]:
    """Every training-option and cross-component problem of a parsed ``spec``; with
    ``data`` (or a ``dataset``), also its first item's keys against the modalities."""
    problems = training_problems(spec, registry) + pipeline_problems(spec, registry)
    if data or dataset is not None:
        problems += read_item(spec, registry, dataset)[1]
    return problems


def check(spec: ModelSpec, registry: Registry | None = None, *, data: bool = False,
          dataset: Any = None) -> None:
    """Raise :class:`SpecError` listing every problem :func:`spec_problems` finds."""
    problems = spec_problems(spec, registry, data=data, dataset=dataset)
    if problems:
        raise SpecError(problems, spec.name)


def validate_source(source: str | Path | Mapping[str, Any], registry: Registry | None = None,
                    *, data: bool = True, reach: bool = True,
                    overrides: Sequence[str] = ()) -> Report:
    """Every problem with a spec (a path, preset name or mapping), round after round:
    YAML, structure and params, training options, preprocessor/tokenizer agreement, the
    data's keys (``data``), the full meta-device build, and (``reach``) warnings about
    parameters no objective reaches. ``overrides``: ``KEY=VALUE`` (mmcore.overrides)."""
    from mmcore.overrides import read_spec

    found = read_spec(source, overrides, registry)
    spec = found.spec
    report = Report(spec.name if spec is not None else str(found.source or source),
                    found.source, list(found.issues))
    if spec is not None:
        _later_rounds(found, spec, registry, report, data=data, reach=reach)
    report.errors = [found.located(issue) for issue in report.errors]
    report.warnings = [found.located(issue) for issue in report.warnings]
    return report


def _later_rounds(found: SpecCheck, spec: ModelSpec, registry: Registry | None, report: Report,
                  *, data: bool, reach: bool) -> None:
    """The checks after structure and params, on whatever those left intact."""
    if "train" not in found.dropped:
        report.errors += training_problems(spec, registry)
    report.errors += pipeline_problems(spec, registry, _component_paths(found.issues))
    item = None
    if data and "data" not in {i.path.split(".")[0] for i in found.issues}:
        item, problems = read_item(spec, registry)
        report.errors += problems
        item = None if problems else item
    if any(i.path.split(".")[0] not in _NON_MODEL_KEYS for i in found.issues):
        return  # a component is broken: the full build would only repeat it
    model = _build(spec, registry, report)
    if model is not None and reach and not found.partial:
        reach_warnings(spec, model, item, registry, report)


def _component_paths(issues: Iterable[SpecIssue]) -> set[str]:
    """The component key paths (``modalities.x.y``, ``fusion``, ...) that have issues."""
    paths = set()
    for issue in issues:
        parts = issue.path.split(".")
        paths.add(".".join(parts[:3] if parts[0] == "modalities" else parts[:2]))
    return paths


def _build(spec: ModelSpec, registry: Registry | None, report: Report) -> MultimodalModel | None:
    """The model on the meta device (its problems go into ``report``), or None."""
    from mmcore.builder import build
    from mmcore.summary import count_parameters

    try:
        model = build(spec, registry=registry, device="meta")
    except SpecError as exc:
        report.errors += exc.issues
        return None
    report.parameters = count_parameters(model)[0]
    return model


# ----------------------------------------------------------------------------- reach


def reach_warnings(spec: ModelSpec, model: MultimodalModel, item: Mapping[str, Any] | None,
                   registry: Registry | None, report: Report) -> None:
    """Warn (per component) about trainable parameters no objective's loss reaches, from
    one backward pass over a batch of two: ``item`` twice, or the tokenizers' registered
    examples. Components frozen by ``train.freeze`` are expected to be unreached. Where
    the pass cannot run, ``report.notes`` says so."""
    if not model.objectives:
        return
    try:
        unreached = unreached_parameters(spec, model, item, registry)
    except Exception as exc:  # a check that cannot run is a note
        report.notes.append("the check for parameters no objective reaches was skipped (the "
                            f"loss on one batch could not run): "
                            f"{_one_line(exc)}")
        return
    for path, count in unreached.items():
        report.warnings.append(SpecIssue(path, f"{count:,} parameters no objective reaches "
                                               "(they would never train)"))


def unreached_parameters(spec: ModelSpec, model: MultimodalModel,
                         item: Mapping[str, Any] | None = None,
                         registry: Registry | None = None) -> dict[str, int]:
    """Component key path -> how many of its trainable, unfrozen parameters get no
    gradient from ``model.loss`` on one batch. ``model`` may be on the meta device: one
    with at most :data:`REACH_CPU_LIMIT` parameters is rebuilt on the CPU to run it."""
    import torch

    from mmcore.builder import build

    if sum(p.numel() for p in model.parameters()) <= REACH_CPU_LIMIT:
        torch.manual_seed(0)
        model = build(spec, registry=registry, device="cpu")
    model.eval()
    batch = _batch(model, spec, item, registry)
    loss = model.loss(batch)["loss"]
    params = [p for p in model.parameters() if p.requires_grad]
    grads = (torch.autograd.grad(loss, params, allow_unused=True) if loss.requires_grad
             else [None] * len(params))
    frozen = {id(p) for path in spec.train.freeze for m in _modules(model, path)
              for p in m.parameters()}
    counts: dict[str, int] = {}
    owners = _owners(spec, model)
    for p, g in zip(params, grads, strict=True):
        if g is None and id(p) not in frozen:
            path = owners.get(id(p), "model")
            counts[path] = counts.get(path, 0) + p.numel()
    return counts


def _modules(model: MultimodalModel, path: str) -> list[Any]:
    try:
        return model.modules_at(path)
    except KeyError:
        return []


def _owners(spec: ModelSpec, model: MultimodalModel) -> dict[int, str]:
    """id(parameter) -> the key path of the component holding it (first one wins)."""
    owners: dict[int, str] = {}
    for path, kind, _ in spec.components():
        if kind in ("preprocessor", "dataset"):
            continue
        for module in _modules(model, path):
            for p in module.parameters():
                owners.setdefault(id(p), path)
    return owners


def _batch(model: MultimodalModel, spec: ModelSpec, item: Mapping[str, Any] | None,
           registry: Registry | None) -> dict[str, Any]:
    """A batch of two, on the model's device: ``item`` collated twice, or examples."""
    import torch

    from mmcore.data import Collator
    from mmcore.plugins import get_registry

    device = next(model.parameters()).device
    if item is not None:
        return _moved(Collator.for_model(model)([item, item]), device)
    registry = registry or get_registry()
    batch: dict[str, Any] = {}
    generator = torch.Generator().manual_seed(0)
    for name, modality in spec.modalities.items():
        example = registry.get("tokenizer", modality.tokenizer.type).example
        if example is None:
            raise ValueError(f"no data to read and tokenizer {modality.tokenizer.type!r} "
                             "registers no example input")
        batch[name] = _moved(example(model.tokenizers[name], 2, generator), device)
    return batch


def _moved(x: Any, device: Any) -> Any:
    """Tensors in ``x`` (nested in mappings) moved to ``device``."""
    if isinstance(x, Mapping):
        return {k: _moved(v, device) for k, v in x.items()}
    return x.to(device) if hasattr(x, "to") and hasattr(x, "device") else x

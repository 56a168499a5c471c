"""Model specs: strict YAML -> pydantic, with every problem reported at once.

A spec names registered components only, written ``{type: name, ...params}``; it never
names an import path. Each component's params are checked by its plugin's config model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mmcore.errors import RegistryError, SpecError, SpecIssue, suggest
from mmcore.registry import Registry
from mmcore.spec_yaml import parse_yaml, read_spec_text
from mmcore.train_spec import TrainSpec

#: The parts of one modality's pipeline, in the order data flows through them.
MODALITY_SLOTS = ("preprocessor", "tokenizer", "encoder")


def component_slots(modalities: Iterable[str], heads: Iterable[str],
                    objectives: Iterable[str]) -> Iterator[tuple[str, str]]:
    """(key path, kind) of every component slot, in the order a model is built and costed:
    each modality's preprocessor -> tokenizer -> encoder, the fusion, heads, objectives, data.

    The one definition of the stage order; the builder, the cost walk and validation
    follow it (filled or not: a slot may be empty).
    """
    for modality in modalities:
        for kind in MODALITY_SLOTS:
            yield f"modalities.{modality}.{kind}", kind
    yield "fusion", "fusion"
    for name in heads:
        yield f"heads.{name}", "head"
    for name in objectives:
        yield f"objectives.{name}", "objective"
    yield "data", "dataset"


def value_at(node: Any, path: str) -> Any:
    """What a dotted key path names in a spec: a validated :class:`ModelSpec` or the raw
    mapping it came from. None where any step is missing or not a container."""
    for part in path.split("."):
        if isinstance(node, Mapping):
            node = node.get(part)
        elif isinstance(node, BaseModel) and part in type(node).model_fields:
            node = getattr(node, part)
        else:
            return None
    return node


class ComponentRef(BaseModel):
    """``{type: registered-name, ...params}``; params are checked by the plugin's config."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ObjectiveRef(ComponentRef):
    """An objective with its weight in the total loss."""

    weight: float = 1.0


class ModalitySpec(BaseModel):
    """One modality's pipeline: preprocessor -> tokenizer -> encoder."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    preprocessor: ComponentRef | None = None
    tokenizer: ComponentRef
    encoder: ComponentRef | None = None
    #: the item key this modality reads; None: its own name. Two modalities with one
    #: source are two views of the same input through their own pipelines (e.g. an RGB
    #: and a colour-free vision tower over one image)
    source: str | None = None


class ModelSpec(BaseModel):
    """A whole model: modalities, fusion, heads, objectives, data and training."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = "model"
    description: str = ""
    modalities: dict[str, ModalitySpec] = Field(min_length=1)
    fusion: ComponentRef
    heads: dict[str, ComponentRef] = Field(default_factory=dict)
    objectives: dict[str, ObjectiveRef] = Field(default_factory=dict)
    data: ComponentRef | None = None
    train: TrainSpec = Field(default_factory=TrainSpec)
    kernels: dict[str, str] = Field(default_factory=dict)
    #: modality -> probability that a training sample loses that modality (its tokens
    #: are masked out), so the model learns to work when it is missing
    modality_dropout: dict[str, float] = Field(default_factory=dict)
    #: notes the builder ignores; ``mmcore inspect`` reads ``reference`` (published figures
    #: to compare with) and ``compare`` (fusion variants to cost side by side)
    metadata: dict[str, Any] = Field(default_factory=dict)
    #: weights a fresh training run starts from: one source for the whole model, or
    #: component path -> source (``{modalities.image: runs/clip}``); a source is an mmcore
    #: checkpoint, a run folder or anything ``mmcore import`` reads (see mmcore.training.init)
    init: str | dict[str, str] | None = None

    @model_validator(mode="after")
    def _names(self) -> ModelSpec:
        for name in self.modalities:
            if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or name == "fused":
                raise ValueError(f"modality name {name!r} must be lower_snake_case, not 'fused'")
        for name, p in self.modality_dropout.items():
            if name not in self.modalities:
                raise ValueError(f"modality_dropout names unknown modality {name!r}")
            if not 0.0 <= p < 1.0:
                raise ValueError(f"modality_dropout[{name}] = {p} must lie in [0, 1)")
        return self

    def sources(self) -> dict[str, str]:
        """Modality -> the item key it reads (its ``source``, else its name)."""
        return {name: m.source or name for name, m in self.modalities.items()}

    def components(self) -> Iterator[tuple[str, str, ComponentRef]]:
        """(key path, kind, ref) for every component in the spec, in build order."""
        for path, kind in component_slots(self.modalities, self.heads, self.objectives):
            ref = self.component(path)
            if ref is not None:
                yield path, kind, ref

    def component(self, path: str) -> ComponentRef | None:
        """The component at a key path such as ``modalities.image.encoder`` or ``heads.cls``
        (None where the slot is empty)."""
        found = value_at(self, path)
        return found if isinstance(found, ComponentRef) else None

    def module_paths(self) -> list[str]:
        """Every path naming built modules (what ``train.freeze`` and
        :meth:`mmcore.model.MultimodalModel.modules_at` accept):
        ``modalities.<m>[.tokenizer|.encoder]``, ``fusion``, ``heads[.<name>]``,
        ``objectives[.<name>]``."""
        paths: list[str] = []
        for name, modality in self.modalities.items():
            paths += [f"modalities.{name}", f"modalities.{name}.tokenizer"]
            if modality.encoder is not None:
                paths.append(f"modalities.{name}.encoder")
        paths.append("fusion")
        for group in ("heads", "objectives"):
            names = list(getattr(self, group))
            paths += [group, *(f"{group}.{n}" for n in names)] if names else []
        return paths

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_defaults=False)


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc)


def _pydantic_issues(err: ValidationError, prefix: str,
                     lines: Mapping[str, int]) -> list[SpecIssue]:
    out = []
    for e in err.errors():
        path = ".".join(p for p in (prefix, _loc(e["loc"])) if p)
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        out.append(SpecIssue(path, msg, _line(path, lines)))
    return out


def _line(path: str, lines: Mapping[str, int]) -> int | None:
    while path:
        if path in lines:
            return lines[path]
        path = path.rpartition(".")[0]
    return None


def check_components(spec: ModelSpec, registry: Registry,
                     lines: Mapping[str, int] | None = None) -> list[SpecIssue]:
    """Every component's type is registered and its params pass the plugin's config."""
    lines = lines or {}
    issues: list[SpecIssue] = []
    for path, kind, ref in spec.components():
        issues += _check_ref(path, kind, ref, registry, lines)
    return issues + _weight_issues(spec, lines) + init_issues(spec, lines)


def init_issues(spec: ModelSpec, lines: Mapping[str, int] | None = None) -> list[SpecIssue]:
    """``init:`` keys must be component paths of this model."""
    if not isinstance(spec.init, dict):
        return []
    known = spec.module_paths()
    issues = []
    for path in spec.init:
        if path not in known:
            hint = suggest(path, known) or f" Paths: {', '.join(known)}"
            issues.append(SpecIssue(f"init.{path}", f"not a component path of this model.{hint}",
                                    _line(f"init.{path}", lines or {})))
    return issues


def _weight_issues(spec: ModelSpec, lines: Mapping[str, int]) -> list[SpecIssue]:
    """Objective weights must be finite and >= 0."""
    issues = []
    for name, oref in spec.objectives.items():
        if not (math.isfinite(oref.weight) and oref.weight >= 0):
            message = "must be >= 0" if oref.weight < 0 else \
                f"must be a finite number >= 0, got {oref.weight}"
            issues.append(SpecIssue(f"objectives.{name}.weight", message,
                                    _line(f"objectives.{name}.weight", lines)))
    return issues


def _check_ref(path: str, kind: str, ref: ComponentRef, registry: Registry,
               lines: Mapping[str, int]) -> list[SpecIssue]:
    """The problems of one component: an unknown type, or params its plugin rejects."""
    try:
        entry = registry.get(kind, ref.type)
    except RegistryError as exc:
        return [SpecIssue(f"{path}.type", str(exc), _line(f"{path}.type", lines))]
    try:
        entry.config.model_validate(ref.params)
    except ValidationError as exc:
        return _pydantic_issues(exc, path, lines)
    return []


def _raw_components(data: Mapping[str, Any]) -> Iterator[tuple[str, str, Any]]:
    """(key path, kind, raw value) of every component slot in unvalidated spec data."""

    def names(key: str) -> list[str]:
        group = data.get(key)
        return [n for n in group if isinstance(n, str)] if isinstance(group, Mapping) else []

    modalities = [m for m in names("modalities") if isinstance(data["modalities"][m], Mapping)]
    for path, kind in component_slots(modalities, names("heads"), names("objectives")):
        yield path, kind, value_at(data, path)


def _unchecked_component_issues(data: Mapping[str, Any], registry: Registry,
                                lines: Mapping[str, int],
                                known: list[SpecIssue]) -> list[SpecIssue]:
    """When the spec's structure is invalid, still check every well-formed component, so
    all problems are reported at once."""
    issues: list[SpecIssue] = []
    for path, kind, raw in _raw_components(data):
        if any(i.path == path or i.path.startswith(path + ".") for i in known):
            continue
        try:
            ref = (ObjectiveRef if kind == "objective" else ComponentRef).model_validate(raw)
        except ValidationError:
            continue  # absent or malformed: reported by the structural check, if required
        issues += _check_ref(path, kind, ref, registry, lines)
    return issues


def params_of(registry: Registry, kind: str, ref: ComponentRef) -> BaseModel:
    """The validated config instance for ``ref``."""
    return registry.get(kind, ref.type).config.model_validate(ref.params)


@dataclass
class SpecCheck:
    """What reading a spec found: the spec (None where its structure is too broken to
    model) and every problem so far. ``dropped``: top-level keys with structural problems
    (say ``train``) left out of ``spec`` (at their defaults) so the rest can be checked."""

    spec: ModelSpec | None
    issues: list[SpecIssue] = field(default_factory=list)
    source: str | None = None
    dropped: frozenset[str] = frozenset()
    #: key path -> YAML line
    lines: Mapping[str, int] = field(default_factory=dict)
    #: key paths set outside the YAML (command-line overrides): no line for their issues
    unlocated: frozenset[str] = frozenset()

    def located(self, issue: SpecIssue) -> SpecIssue:
        """``issue`` with the YAML line of its key path (or the nearest parent's)."""
        if issue.line is not None or any(_overlap(issue.path, p) for p in self.unlocated):
            return issue
        return SpecIssue(issue.path, issue.message, _line(issue.path, self.lines))

    @property
    def partial(self) -> bool:
        """Whether ``spec`` lacks some of what the source said."""
        return bool(self.dropped)

    def raise_issues(self) -> ModelSpec:
        """The spec, or SpecError listing every issue."""
        if self.issues or self.spec is None:
            raise SpecError(self.issues, self.source)
        return self.spec


def _overlap(path: str, other: str) -> bool:
    """Whether one key path lies within the other (or they are equal)."""
    return path == other or path.startswith(other + ".") or other.startswith(path + ".")


def _registry(registry: Registry | None) -> Registry:
    if registry is None:
        from mmcore.plugins import get_registry

        return get_registry()
    return registry


def check_spec(data: Any, lines: Mapping[str, int] | None = None, source: str | None = None,
               registry: Registry | None = None) -> SpecCheck:
    """A mapping -> :class:`SpecCheck`: the structure and every component's params are
    checked; problems are collected, never raised."""
    lines = lines or {}
    if not isinstance(data, Mapping):
        return SpecCheck(None, [SpecIssue("", "a spec must be a mapping at the top level")],
                         source)
    registry = _registry(registry)
    try:
        spec = ModelSpec.model_validate(data)
    except ValidationError as exc:
        structural = _pydantic_issues(exc, "", lines)
        issues = structural + _unchecked_component_issues(data, registry, lines, structural)
        dropped = frozenset(i.path.split(".")[0] for i in structural)
        partial = _partial_spec(data, dropped)
        if partial is not None:
            issues += _weight_issues(partial, lines)
        return SpecCheck(partial, issues, source, dropped, lines)
    return SpecCheck(spec, check_components(spec, registry, lines), source, lines=lines)


def _partial_spec(data: Mapping[str, Any], dropped: frozenset[str]) -> ModelSpec | None:
    """``data`` without the ``dropped`` top-level keys, if they are optional and the rest
    is valid."""
    optional = {name for name, f in ModelSpec.model_fields.items() if not f.is_required()}
    if not dropped <= optional:
        return None
    try:
        return ModelSpec.model_validate({k: v for k, v in data.items() if k not in dropped})
    except ValidationError:
        return None


def parse_spec(data: Any, lines: Mapping[str, int] | None = None, source: str | None = None,
               registry: Registry | None = None) -> ModelSpec:
    """A mapping -> ModelSpec, with the components checked against ``registry``."""
    return check_spec(data, lines, source, registry).raise_issues()


def resolve_source(source: str | Path, registry: Registry) -> tuple[str, str]:
    """A path or a preset name -> (YAML text, display name)."""
    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise SpecError([SpecIssue("", f"no such spec file: {path}")], str(source))
        return read_spec_text(path), str(path)
    name = str(source)
    presets = registry.names("preset")
    if name not in presets:
        hint = suggest(name, presets) or f" Presets: {', '.join(presets)}"
        raise SpecError([SpecIssue("", f"{name!r} is neither a spec file nor a preset.{hint}")])
    target = registry.get("preset", name).factory()
    if isinstance(target, Mapping):
        return yaml.safe_dump(dict(target), sort_keys=False), f"preset {name}"
    if not Path(target).is_file():
        entry = registry.get("preset", name)
        raise SpecError([SpecIssue("", f"preset {name!r} of plugin {entry.plugin!r} points at "
                                   f"a missing file: {target}")])
    return Path(target).read_text(encoding="utf-8"), f"preset {name}"


def read_spec(source: str | Path | Mapping[str, Any],
              registry: Registry | None = None) -> SpecCheck:
    """Like :func:`load_spec`, but every problem is collected in a :class:`SpecCheck`
    (with the spec, where its structure allows) instead of raised."""
    registry = _registry(registry)
    if isinstance(source, Mapping):
        return check_spec(dict(source), registry=registry)
    try:
        text, name = resolve_source(source, registry)
        data, lines = parse_yaml(text, name)
    except SpecError as exc:
        return SpecCheck(None, exc.issues, exc.source)
    return check_spec(data, lines, name, registry)


def load_spec(source: str | Path | Mapping[str, Any],
              registry: Registry | None = None) -> ModelSpec:
    """Load and validate a spec from a YAML path, a preset name or a mapping.

    Raises :class:`SpecError` listing every problem, each with its key path and line.
    """
    return read_spec(source, registry).raise_issues()

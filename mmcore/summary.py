"""Model summaries for ``mmcore inspect``: parameters per component, tokens per modality,
and the analytic cost of a spec (:mod:`mmcore.analysis`).

The parameter counts of a model built on the meta
device (no memory allocated, even for CLIP ViT-B/32's 151M parameters) are the cross-check.
A spec's ``metadata`` may hold ``reference`` figures (a publication's parameter counts, with
what its counting leaves out) and ``compare`` (fusion variants costed side by side).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch import nn

from mmcore.analysis import CostSummary, analyse
from mmcore.contract import Tokens

if TYPE_CHECKING:
    from mmcore.model import MultimodalModel
    from mmcore.registry import Registry
    from mmcore.spec import ModelSpec


@dataclass(frozen=True)
class ComponentSummary:
    """One built component: its spec key path, kind, registered type and parameter counts."""

    path: str
    kind: str
    type: str
    parameters: int
    trainable: int


@dataclass
class ModelSummary:
    """What ``mmcore inspect`` reports about a model."""

    name: str
    description: str
    components: list[ComponentSummary]
    parameters: int
    trainable: int
    #: modality -> tokens entering the fusion (None where it could not be worked out)
    tokens: dict[str, int | None] = field(default_factory=dict)
    kernels: dict[str, str] = field(default_factory=dict)
    #: the analytic cost (filled by :func:`summarize`)
    cost: CostSummary | None = None
    reference: ReferenceCheck | None = None
    compare: list[VariantCost] = field(default_factory=list)
    #: parameters that train: requires_grad and not under ``train.freeze``
    trains: int | None = None
    #: extra report lines a fusion offers (``inspect_lines()``, e.g. per-block parameters)
    details: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.reference is not None:
            data["reference"]["matches"] = self.reference.matches
        return data


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts of ``module``; shared tensors count once."""
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def _module_at(model: MultimodalModel, path: str) -> nn.Module | None:
    """The one built module at a spec key path (None for preprocessors, data, unknown)."""
    try:
        found = model.modules_at(path)
    except KeyError:
        return None
    return found[0] if len(found) == 1 else None


def component_summaries(model: MultimodalModel, spec: ModelSpec) -> list[ComponentSummary]:
    """Parameter counts of every module the spec names, in spec order."""
    rows = []
    for path, kind, ref in spec.components():
        module = _module_at(model, path)
        if module is not None:
            total, trainable = count_parameters(module)
            rows.append(ComponentSummary(path, kind, ref.type, total, trainable))
    return rows


def _to(value: Any, device: torch.device | str) -> Any:
    """Move tensors (also inside a mapping or Tokens) to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, Tokens):
        return Tokens(_to(value.x, device), _to(value.mask, device))
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def _run_tokens(model: MultimodalModel, modality: str, inputs: Any) -> int:
    """Tokens out of the tokenizer, then out of the encoder where that runs on meta too."""
    tokens = model.tokenizers[modality](inputs)
    if modality in model.encoders:
        # an encoder that needs real values is skipped: it keeps N in the usual case
        with contextlib.suppress(Exception):
            tokens = model.encoders[modality](_to(tokens, tokens.x.device))
    return int(tokens.x.shape[1])


def token_count(model: MultimodalModel, modality: str, registry: Registry) -> int | None:
    """Tokens ``modality`` hands to the fusion for its plugin's example input, or None.

    On a meta model the tokenizer (and encoder) run with the example input on the CPU,
    then on the meta device; a component that needs real values there (e.g. a range
    check) gives None.
    """
    spec = model.spec
    entry = registry.get("tokenizer", spec.modalities[modality].tokenizer.type)
    if entry.example is None:
        return None
    generator = torch.Generator().manual_seed(0)
    try:
        inputs = entry.example(model.tokenizers[modality], 1, generator)
    except Exception:  # an example factory that cannot work with meta modules
        return None
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    candidates = [inputs, _to(inputs, device)] if device.type == "meta" else [_to(inputs, device)]
    for candidate in candidates:
        try:
            return _run_tokens(model, modality, candidate)
        except Exception:  # meta tensors reject data-dependent checks such as .item()
            continue
    return None


def summarize_model(model: MultimodalModel, registry: Registry | None = None) -> ModelSummary:
    """Summary of a built model (any device; meta costs nothing)."""
    from mmcore.plugins import get_registry

    registry = registry or get_registry()
    spec = model.spec
    total, trainable = count_parameters(model)
    with torch.no_grad():
        tokens = {m: token_count(model, m, registry) for m in sorted(spec.modalities)}
    extra = getattr(model.fusion, "inspect_lines", None)
    return ModelSummary(spec.name, spec.description, component_summaries(model, spec), total,
                        trainable, tokens, dict(model.kernel_choices),
                        trains=training_parameters(model, spec),
                        details=list(extra()) if callable(extra) else [])


def training_parameters(model: MultimodalModel, spec: ModelSpec) -> int:
    """Parameters that train: requires_grad, outside the components ``train.freeze`` names."""
    frozen = {id(p) for path in (spec.train.freeze if spec.train else [])
              for module in model.modules_at(path) for p in module.parameters()}
    return sum(p.numel() for p in model.parameters()
               if p.requires_grad and id(p) not in frozen)


def summarize(spec: ModelSpec, registry: Registry | None = None, *, batch_size: int = 1,
              dtype: str = "fp32", context: int | None = None) -> ModelSummary:
    """Build ``spec`` on the meta device (full validation, no memory) and summarise it,
    with its analytic cost at ``batch_size`` and ``dtype`` (fp32, bf16 or fp16), its
    reference figures and its fusion comparison, if it has them.

    Raises :class:`mmcore.SpecError` if the spec (or a compared variant) does not build.
    """
    from mmcore.builder import build

    model = build(spec, registry=registry, device="meta")
    summary = summarize_model(model, registry)
    built = {c.path: c.parameters for c in summary.components}
    summary.cost = analyse(spec, registry, batch_size=batch_size, dtype=dtype, built=built,
                           context=context)
    summary.reference = check_reference(model, spec)
    summary.compare = compare_fusions(spec, registry)
    return summary


# ----------------------------------------------------------------------------- reference figures

#: What each ``metadata.reference.excludes`` item leaves out of mmcore's count.
EXCLUSIONS = {
    "biases": "the biases of Linear and Conv layers",
    "objectives": "parameters of the objectives (e.g. a contrastive temperature)",
}


class ReferenceFigures(BaseModel):
    """``metadata.reference`` of a spec: published figures ``mmcore inspect`` compares with.

    ``excludes`` names what the publication's counting leaves out (see :data:`EXCLUSIONS`);
    ``layer_parameters`` is one repeated layer (block) of the component at ``layer``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    source: str
    note: str = ""
    parameters: int | None = Field(None, gt=0)
    layer_parameters: int | None = Field(None, gt=0)
    layer: str | None = None
    excludes: list[Literal["biases", "objectives"]] = Field(default_factory=list)


@dataclass
class ReferenceCheck:
    """mmcore's counts beside a spec's reference figures.

    ``counted``: mmcore's count under the reference's convention (``excludes`` left out);
    ``excluded``: what each exclusion is worth in this model.
    """

    source: str
    note: str
    excludes: list[str]
    parameters: int | None = None
    counted: int | None = None
    full: int | None = None
    excluded: dict[str, int] = field(default_factory=dict)
    layer: str | None = None
    layers: int | None = None
    layer_parameters: int | None = None
    layer_counted: int | None = None
    layer_full: int | None = None
    layer_excluded: dict[str, int] = field(default_factory=dict)

    @property
    def matches(self) -> bool:
        """Every reference figure equals mmcore's count under the reference's convention."""
        pairs = [(self.parameters, self.counted), (self.layer_parameters, self.layer_counted)]
        return all(ref == ours for ref, ours in pairs if ref is not None)


def bias_parameters(module: nn.Module) -> int:
    """Elements in the biases of every Linear and Conv layer inside ``module``."""
    layers = (nn.Linear, nn.modules.conv._ConvNd)
    biases = [getattr(m, "bias", None) for m in module.modules() if isinstance(m, layers)]
    return sum(int(b.numel()) for b in biases if isinstance(b, torch.Tensor))


def first_layer(module: nn.Module) -> tuple[nn.Module, int] | None:
    """The first block of the first ModuleList of identical blocks in ``module``, and how
    many blocks that list holds (a transformer's layers); None if there is none."""
    for child in module.modules():
        if isinstance(child, nn.ModuleList) and len(child) > 0 and all(
                type(block) is type(child[0]) for block in child):
            return child[0], len(child)
    return None


def _excluded(module: nn.Module, excludes: Sequence[str],
              objectives: nn.Module | None) -> dict[str, int]:
    """What each exclusion is worth in ``module``."""
    out = {}
    if "biases" in excludes:
        out["biases"] = bias_parameters(module)
    if "objectives" in excludes and objectives is not None:
        out["objectives"] = count_parameters(objectives)[0]
    return out


def check_reference(model: MultimodalModel, spec: ModelSpec) -> ReferenceCheck | None:
    """Compare ``spec.metadata.reference`` with ``model`` (a meta build is enough).

    Raises SpecError when the reference block is malformed or names an unknown layer.
    """
    raw = spec.metadata.get("reference")
    if raw is None:
        return None
    ref = _validated(ReferenceFigures, raw, "metadata.reference", spec.name)
    total = count_parameters(model)[0]
    excluded = _excluded(model, ref.excludes, model.objectives)
    check = ReferenceCheck(ref.source, ref.note, list(ref.excludes), ref.parameters,
                           total - sum(excluded.values()), total, excluded)
    if ref.layer_parameters is not None:
        _check_layer(model, ref, check, spec.name)
    return check


def _check_layer(model: MultimodalModel, ref: ReferenceFigures, check: ReferenceCheck,
                 source: str) -> None:
    from mmcore.errors import SpecError, SpecIssue

    module = _module_at(model, ref.layer or "")
    found = first_layer(module) if module is not None else None
    if found is None:
        raise SpecError([SpecIssue("metadata.reference.layer",
                                   f"{ref.layer!r} names no component with repeated layers; "
                                   "give a key path such as modalities.audio.encoder")], source)
    block, check.layers = found
    check.layer, check.layer_parameters = ref.layer, ref.layer_parameters
    check.layer_full = count_parameters(block)[0]
    check.layer_excluded = _excluded(block, ref.excludes, None)
    check.layer_counted = check.layer_full - sum(check.layer_excluded.values())


def _validated(model_type: type[BaseModel], raw: Any, path: str, source: str) -> Any:
    """``raw`` validated as ``model_type``; problems become a SpecError at ``path``."""
    from mmcore.errors import SpecError, SpecIssue

    try:
        return model_type.model_validate(raw)
    except ValidationError as exc:
        issues = [SpecIssue(".".join([path, *map(str, e["loc"])]),
                            "unknown key" if e["type"] == "extra_forbidden" else e["msg"])
                  for e in exc.errors()]
        raise SpecError(issues, source) from None


# ----------------------------------------------------------------------------- fusion comparisons


@dataclass
class VariantCost:
    """One fusion of a comparison (``metadata.compare``), in the spec's model.

    ``parameters`` and ``flops`` are the whole model's (analytic, per sample);
    ``built_fusion_parameters`` is the meta-built fusion's count (the cross-check).
    """

    name: str
    fusion: str
    fusion_parameters: int | None
    fusion_flops: int | None
    attention_scores: int | None
    parameters: int
    flops: int
    partial: bool
    built_fusion_parameters: int | None
    note: str = ""


def comparison_specs(spec: ModelSpec, registry: Registry | None = None) -> dict[str, ModelSpec]:
    """``spec`` with its fusion replaced by each of ``metadata.compare`` (name -> fusion
    component), validated; empty when the spec compares nothing."""
    from mmcore.spec import ComponentRef

    raw = spec.metadata.get("compare")
    if raw is None:
        return {}
    refs = _validated(_CompareBlock, {"variants": raw}, "metadata.compare", spec.name).variants
    return {name: _variant(spec, name, ref, registry) for name, ref in refs.items()
            if isinstance(ref, ComponentRef)}


def _variant(spec: ModelSpec, name: str, ref: Any, registry: Registry | None) -> ModelSpec:
    from mmcore.spec import parse_spec

    data = {**spec.to_dict(), "fusion": ref.model_dump(), "metadata": {},
            "name": f"{spec.name}[{name}]"}
    with _as_variant(name, spec.name):
        return parse_spec(data, source=spec.name, registry=registry)


@contextlib.contextmanager
def _as_variant(name: str, source: str) -> Iterator[None]:
    """Report a compared variant's fusion problems at ``metadata.compare.<name>``."""
    from mmcore.errors import SpecError, SpecIssue

    try:
        yield
    except SpecError as exc:
        prefix = f"metadata.compare.{name}"
        raise SpecError([SpecIssue(prefix + i.path.removeprefix("fusion"), i.message)
                         if i.path.startswith("fusion") else i for i in exc.issues],
                        source) from None


class _CompareBlock(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    variants: dict[str, Any] = Field(min_length=1)

    @field_validator("variants")
    @classmethod
    def _refs(cls, value: dict[str, Any]) -> dict[str, Any]:
        from mmcore.spec import ComponentRef

        return {name: ComponentRef.model_validate(ref) for name, ref in value.items()}


def compare_fusions(spec: ModelSpec, registry: Registry | None = None) -> list[VariantCost]:
    """Analytic costs of every fusion in ``metadata.compare``, each variant also built on
    the meta device as a check. Raises SpecError if a variant is invalid."""
    from mmcore.builder import build

    out = []
    for name, variant in comparison_specs(spec, registry).items():
        with _as_variant(name, spec.name):
            model = build(variant, registry=registry, device="meta")
        built = count_parameters(model.fusion)[0]
        cost = analyse(variant, registry)
        fusion = next(r for r in cost.components if r.kind == "fusion")
        out.append(VariantCost(name, fusion.type, fusion.parameters, fusion.flops,
                               fusion.attention_scores, cost.parameters, cost.flops,
                               cost.partial, built, fusion.note))
    return out

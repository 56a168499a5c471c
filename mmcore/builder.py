"""Build a :class:`MultimodalModel` from a validated spec. The model receives built modules.

:class:`BuildContext` (what a factory knows of its neighbours) lives in
:mod:`mmcore.build_context` and is re-exported here, where plugins import it from."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from pydantic import BaseModel

from mmcore.build_context import BuildContext
from mmcore.errors import SpecError, SpecIssue
from mmcore.kernels import Hardware, KernelError, KernelSet, select_kernels
from mmcore.limits import Limit
from mmcore.registry import Entry, Registry
from mmcore.spec import ComponentRef, ModelSpec, ObjectiveRef


def make_component(registry: Registry, kind: str, ref: ComponentRef, ctx: BuildContext) -> Any:
    """Validate ``ref``'s params with its plugin's config and call the factory."""
    entry: Entry = registry.get(kind, ref.type)
    params: BaseModel = entry.config.model_validate(ref.params)
    return entry.factory(params, ctx)


@contextmanager
def _at(path: str, issues: list[SpecIssue]) -> Iterator[None]:
    """Turn a factory's error into a spec issue at ``path`` (ValueError/TypeError as they
    are; anything else a plugin raises named with its type)."""
    try:
        yield
    except (ValueError, TypeError, KernelError) as exc:
        issues.append(SpecIssue(path, str(exc)))
    except Exception as exc:  # a plugin's factory failing in its own way: still a report
        issues.append(SpecIssue(path, f"building it failed: {type(exc).__name__}: {exc}"))


def build(spec: ModelSpec, *, registry: Registry | None = None, device: str | torch.device = "cpu",
          hardware: Hardware | None = None) -> Any:
    """Build the model described by ``spec`` on ``device`` (``"meta"`` allocates nothing).

    Kernels are chosen here, once, from the hardware (or ``spec.kernels``).
    """
    from mmcore.model import MultimodalModel
    from mmcore.plugins import get_registry

    registry = registry or get_registry()
    check_size(spec, registry)
    issues: list[SpecIssue] = []
    kernels = KernelSet()
    with _at("kernels", issues):
        hw_device = "cpu" if str(device) == "meta" else device
        kernels = select_kernels(spec.kernels, hardware or _hardware_for(hw_device))
    ctx = BuildContext(kernels=kernels)
    with torch.device(device):
        parts = _build_parts(spec, registry, ctx, issues)
    if issues:
        raise SpecError(issues, spec.name)
    model = MultimodalModel(**parts, kernels=kernels, spec=spec)
    return model


#: The largest model mmcore builds, checked analytically before anything is built (even
#: on the meta device, where ``layers: 10**20`` would otherwise hang).
PARAMETERS = Limit("parameters", 10**13, "the parameters of a model")


def check_size(spec: ModelSpec, registry: Registry) -> None:
    """SpecError when the analytic parameter count of ``spec`` (the components that have
    cost functions) is over the :data:`PARAMETERS` limit, naming the largest components."""
    from mmcore.analysis import analyse

    try:
        cost = analyse(spec, registry)
    except (ValueError, TypeError, OverflowError, ArithmeticError):
        return  # a cost function that cannot judge this spec: the build reports problems
    ceiling = PARAMETERS.value()
    if cost.parameters <= ceiling:
        return
    big = sorted((r for r in cost.components if r.parameters), key=lambda r: -(r.parameters or 0))
    where = ", ".join(f"{r.path} {float(r.parameters or 0):.2g}" for r in big[:3])
    raise SpecError([SpecIssue(big[0].path if big else "", f"this spec has "
                               f"{float(cost.parameters):.2g} parameters ({where}), over the "
                               f"ceiling of {float(ceiling):.0e} {PARAMETERS.hint()}")],
                    spec.name)


def _hardware_for(device: str | torch.device) -> Hardware:
    from mmcore.kernels import detect_hardware

    return detect_hardware(device)


def _build_parts(spec: ModelSpec, registry: Registry, ctx: BuildContext,
                 issues: list[SpecIssue]) -> dict[str, Any]:
    builder = _Builder(registry, ctx.kernels, issues)
    for path, kind, ref in spec.components():  # the spec's one stage order
        builder.visit(path, kind, ref)
    if builder.fusion is None:
        builder.heads, builder.objectives = {}, {}
    return {"preprocessors": builder.pre, "tokenizers": builder.tok, "encoders": builder.enc,
            "fusion": builder.fusion, "heads": builder.heads, "objectives": builder.objectives}


class _Builder:
    """Builds each stage in spec order, handing every factory what the stages before it
    produced: a modality's widths to its encoder, all widths to the fusion, the fusion's
    embedding widths to heads, and the heads' sizes to objectives. A failed stage becomes a
    spec issue; the stages that depend on it are skipped."""

    def __init__(self, registry: Registry, kernels: KernelSet, issues: list[SpecIssue]) -> None:
        self.registry, self.kernels, self.issues = registry, kernels, issues
        self.pre: dict[str, Any] = {}
        self.tok: dict[str, Any] = {}
        self.enc: dict[str, Any] = {}
        self.widths: dict[str, int] = {}
        self.modalities: set[str] = set()
        self.fusion: Any = None
        self.heads: dict[str, Any] = {}
        self.objectives: dict[str, Any] = {}

    def visit(self, path: str, kind: str, ref: ComponentRef) -> None:
        if kind in ("preprocessor", "tokenizer", "encoder"):
            self._modality_part(path, kind, ref)
        elif kind == "fusion":
            self._fusion(ref)
        elif kind in ("head", "objective") and self.fusion is not None:
            self._top(path, kind, ref)

    def _make(self, path: str, kind: str, ref: ComponentRef, ctx: BuildContext) -> Any:
        with _at(path, self.issues):
            return make_component(self.registry, kind, ref, ctx)
        return None

    def _modality_part(self, path: str, kind: str, ref: ComponentRef) -> None:
        name = path.split(".")[1]
        self.modalities.add(name)
        ctx = BuildContext(kernels=self.kernels, modality=name,
                           in_width=self.widths.get(name) if kind == "encoder" else None)
        if kind == "preprocessor":
            with torch.device("cpu"):
                module = self._make(path, kind, ref, ctx)
            if module is not None:
                self.pre[name] = module
            return
        if kind == "encoder" and name not in self.widths:
            return  # its tokenizer failed: already reported
        module = self._make(path, kind, ref, ctx)
        if module is not None:
            (self.tok if kind == "tokenizer" else self.enc)[name] = module
            self.widths[name] = module.out_width

    def _fusion(self, ref: ComponentRef) -> None:
        if set(self.widths) != self.modalities:
            return  # a modality failed to build: already reported
        ctx = BuildContext(kernels=self.kernels, widths=dict(sorted(self.widths.items())))
        self.fusion = self._make("fusion", "fusion", ref, ctx)

    def _top(self, path: str, kind: str, ref: ComponentRef) -> None:
        emb = dict(self.fusion.embedding_widths)
        name = path.split(".", 1)[1]
        if kind == "head":
            head = self._make(path, kind, ref, BuildContext(kernels=self.kernels,
                                                            embedding_widths=emb))
            if head is not None:
                self.heads[name] = head
            return
        ctx = BuildContext(kernels=self.kernels, embedding_widths=emb,
                           widths=dict(sorted(self.widths.items())),
                           heads={n: h.out_features for n, h in self.heads.items()},
                           head_modules=dict(self.heads))
        objective = self._make(path, kind, ref, ctx)
        if objective is not None:
            assert isinstance(ref, ObjectiveRef)
            self.objectives[name] = (objective, ref.weight)


def validate(spec: ModelSpec, registry: Registry | None = None) -> None:
    """Full validation without allocating: build on the meta device. Raises SpecError."""
    build(spec, registry=registry, device="meta")

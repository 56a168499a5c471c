"""Build a :class:`MultimodalModel` from a validated spec. The model receives built modules."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel

from mmcore.errors import SpecError, SpecIssue
from mmcore.kernels import Hardware, KernelError, KernelSet, select_kernels
from mmcore.registry import Entry, Registry
from mmcore.spec import ComponentRef, ModelSpec


@dataclass
class BuildContext:
    """What a factory may know about its neighbours when it is built.

    ``in_width``: width of the Tokens this component receives (encoders, tokenizer None).
    ``widths``: per-modality encoder output widths (fusions; objectives that read
    ``ModelOutput.tokens`` fall back to them).
    ``embedding_widths``: the fusion's pooled-embedding widths by name (heads, objectives).
    """

    kernels: KernelSet
    modality: str | None = None
    in_width: int | None = None
    widths: dict[str, int] = field(default_factory=dict)
    embedding_widths: dict[str, int] = field(default_factory=dict)
    heads: dict[str, int] = field(default_factory=dict)  # head name -> output size

    def encoder_width(self, requested: int | None) -> int:
        """An encoder's width: its own ``requested`` width or its input's; they must agree."""
        if self.in_width is None:
            raise ValueError("an encoder needs the width of its input tokens")
        if requested is not None and requested != self.in_width:
            raise ValueError(f"width {requested} does not match the tokenizer's width "
                             f"{self.in_width}")
        return self.in_width


def make_component(registry: Registry, kind: str, ref: ComponentRef, ctx: BuildContext) -> Any:
    """Validate ``ref``'s params with its plugin's config and call the factory."""
    entry: Entry = registry.get(kind, ref.type)
    params: BaseModel = entry.config.model_validate(ref.params)
    return entry.factory(params, ctx)


@contextmanager
def _at(path: str, issues: list[SpecIssue]) -> Iterator[None]:
    """Turn a factory's ValueError/TypeError into a spec issue at ``path``."""
    try:
        yield
    except (ValueError, TypeError, KernelError) as exc:
        issues.append(SpecIssue(path, str(exc)))


def build(spec: ModelSpec, *, registry: Registry | None = None, device: str | torch.device = "cpu",
          hardware: Hardware | None = None) -> Any:
    """Build the model described by ``spec`` on ``device`` (``"meta"`` allocates nothing).

    Kernels are chosen here, once, from the hardware (or ``spec.kernels``).
    """
    from mmcore.model import MultimodalModel
    from mmcore.plugins import get_registry

    registry = registry or get_registry()
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


def _hardware_for(device: str | torch.device) -> Hardware:
    from mmcore.kernels import detect_hardware

    return detect_hardware(device)


def _build_parts(spec: ModelSpec, registry: Registry, ctx: BuildContext,
                 issues: list[SpecIssue]) -> dict[str, Any]:
    pre, tok, enc, widths = {}, {}, {}, {}
    for name, ms in spec.modalities.items():
        mctx = BuildContext(kernels=ctx.kernels, modality=name)
        if ms.preprocessor is not None:
            with _at(f"modalities.{name}.preprocessor", issues), torch.device("cpu"):
                pre[name] = make_component(registry, "preprocessor", ms.preprocessor, mctx)
        with _at(f"modalities.{name}.tokenizer", issues):
            tok[name] = make_component(registry, "tokenizer", ms.tokenizer, mctx)
            widths[name] = tok[name].out_width
        if ms.encoder is not None and name in widths:
            mctx.in_width = widths[name]
            with _at(f"modalities.{name}.encoder", issues):
                enc[name] = make_component(registry, "encoder", ms.encoder, mctx)
                widths[name] = enc[name].out_width
    fusion = None
    if len(widths) == len(spec.modalities):
        fctx = BuildContext(kernels=ctx.kernels, widths=dict(sorted(widths.items())))
        with _at("fusion", issues):
            fusion = make_component(registry, "fusion", spec.fusion, fctx)
    tctx = BuildContext(kernels=ctx.kernels, widths=dict(sorted(widths.items())))
    heads, objectives = _build_tops(spec, registry, tctx, fusion, issues)
    return {"preprocessors": pre, "tokenizers": tok, "encoders": enc, "fusion": fusion,
            "heads": heads, "objectives": objectives}


def _build_tops(spec: ModelSpec, registry: Registry, ctx: BuildContext, fusion: Any,
                issues: list[SpecIssue]) -> tuple[dict[str, Any], dict[str, Any]]:
    if fusion is None:
        return {}, {}
    emb = dict(fusion.embedding_widths)
    heads: dict[str, Any] = {}
    hctx = BuildContext(kernels=ctx.kernels, embedding_widths=emb)
    for name, ref in spec.heads.items():
        with _at(f"heads.{name}", issues):
            heads[name] = make_component(registry, "head", ref, hctx)
    octx = BuildContext(kernels=ctx.kernels, embedding_widths=emb, widths=dict(ctx.widths),
                        heads={n: h.out_features for n, h in heads.items()})
    objectives: dict[str, Any] = {}
    for name, oref in spec.objectives.items():
        with _at(f"objectives.{name}", issues):
            objectives[name] = (make_component(registry, "objective", oref, octx), oref.weight)
    return heads, objectives


def validate(spec: ModelSpec, registry: Registry | None = None) -> None:
    """Full validation without allocating: build on the meta device. Raises SpecError."""
    build(spec, registry=registry, device="meta")

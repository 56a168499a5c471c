"""The analytic cost of a spec: parameters, FLOPs, activation and training memory, from each
component's registered cost function (mmcore.cost), walked in the spec's stage order without
building anything. ``mmcore inspect`` shows it beside the meta-built parameter counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mmcore.spec import MODALITY_SLOTS

if TYPE_CHECKING:
    from mmcore.registry import Registry
    from mmcore.spec import ModelSpec

#: How ``mmcore inspect`` counts FLOPs, in words.
FLOPS_CONVENTION = (
    "forward FLOPs per sample, 2 FLOPs per multiply-add: matrix products, convolutions and "
    "attention (q k^T and p v, every score even under a causal mask); softmax, norms, "
    "activations and other element-wise work are left out. A training step costs about 3x "
    "the forward pass (backward = 2x forward).")

@dataclass
class ComponentCost:
    """Analytic cost of one spec component, per sample, beside its meta-built count.

    ``parameters`` etc. are None ("n/a") when the component registers no cost function or
    its inputs' shapes are unknown; ``note`` says why. ``built_parameters`` is None for
    components that build no module (preprocessors).
    """

    path: str
    kind: str
    type: str
    parameters: int | None
    flops: int | None
    activations: int | None
    attention_scores: int | None
    built_parameters: int | None = None
    note: str = ""


@dataclass
class CostSummary:
    """The analytic side of ``mmcore inspect``: totals over the components with a cost.

    ``partial`` is True when some component is n/a (its cost is missing from the totals).
    ``memory`` is a :class:`mmcore.cost.TrainingMemory` as a dict (bytes).
    """

    components: list[ComponentCost]
    parameters: int
    flops: int
    activations: int
    partial: bool
    #: modality -> tokens entering the fusion, from the cost functions (None: unknown)
    tokens: dict[str, int | None]
    #: the fusion's largest attention pattern, query-key scores per head in one layer
    attention_scores: int | None
    batch_size: int
    dtype: str
    memory: dict[str, int]
    flops_convention: str = FLOPS_CONVENTION
    assumptions: list[str] = field(default_factory=list)
    #: for models with decoding components: ``context`` (tokens), ``flops_per_token`` (the
    #: token at position ``context``, attending that many keys) and ``kv_cache_bytes`` (the
    #: keys and values of ``context`` positions at ``batch_size`` and ``dtype``); else None
    generation: dict[str, int] | None = None
    #: extra figures the components' cost functions offer (:class:`mmcore.cost.Figure`),
    #: resolved: ``{"component", "name", "value", "unit"}``
    figures: list[dict[str, Any]] = field(default_factory=list)


#: bytes per element of the ``mmcore inspect --dtype`` choices
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def generation_figures(cost: Any, context: int | None, batch_size: int, dtype: str
                       ) -> dict[str, int] | None:
    """Per-token FLOPs and KV-cache bytes from the summed :class:`GenerationCost` ``cost``
    (None: no component decodes). ``context`` defaults to the components' longest context;
    a context beyond it is refused."""
    if cost is None:
        return None
    limit = cost.max_context
    if context is None:
        if limit is None:
            return None
        context = limit
    if limit is not None and context > limit:
        raise ValueError(f"--context {context} exceeds the model's context of {limit} tokens")
    return {"context": context, "flops_per_token": cost.flops + cost.flops_per_key * context,
            "kv_cache_bytes": cost.kv_elements * context * batch_size * DTYPE_BYTES[dtype]}


def _entry_cost(registry: Registry, kind: str, ref: Any, ctx: Any,
                path: str = "") -> tuple[Any, str]:
    """(Cost or None, why not) for one component, from its registered cost function, else
    measured on the meta device (:mod:`mmcore.meta_cost`, with a note)."""
    entry = registry.get(kind, ref.type)
    if entry.cost is None:
        return _measured(entry, ref, ctx, path)
    try:
        return entry.cost(entry.config.model_validate(ref.params), ctx), ""
    except Exception as exc:  # a cost function that cannot work here: reported, not fatal
        return None, f"cost of {ref.type!r} failed: {exc}"


def _measured(entry: Any, ref: Any, ctx: Any, path: str) -> tuple[Any, str]:
    """A component without a cost function, built on the meta device and measured."""
    from mmcore.meta_cost import NOTE, measured_cost

    if entry.kind == "preprocessor":
        return None, f"preprocessor {ref.type!r} registers no cost function"
    modality = path.split(".")[1] if path.startswith("modalities.") else None
    try:
        return measured_cost(entry, entry.config.model_validate(ref.params), ctx, modality), NOTE
    except Exception as exc:  # cannot be measured here: n/a, and why
        return None, (f"{entry.kind} {ref.type!r} registers no cost function, and measuring "
                      f"it on the meta device failed: {exc}")


def _row(path: str, kind: str, ref: Any, cost: Any, note: str) -> ComponentCost:
    if cost is None:
        return ComponentCost(path, kind, ref.type, None, None, None, None, note=note)
    return ComponentCost(path, kind, ref.type, cost.params, cost.flops, cost.activations,
                         cost.attention_scores or None, note=note)


class _CostWalk:
    """Walks a spec in its stage order (``ModelSpec.components``, as the builder does):
    tokenizer -> encoder -> fusion -> heads -> objectives, handing each cost function the
    shapes and widths the previous stage reported (heads and objectives also get the
    per-modality token shapes that entered the fusion)."""

    def __init__(self, spec: ModelSpec, registry: Registry) -> None:
        self.spec, self.registry = spec, registry
        self.rows: list[ComponentCost] = []
        self.shapes: dict[str, Any] = {}
        self.fusion: Any = None
        self.heads: dict[str, int] = {}
        self.generation: Any = None  # the summed GenerationCost of decoding components
        self.figures: list[tuple[str, Any]] = []  # (path, Figure) from the cost functions

    def visit(self, path: str, kind: str, ref: Any) -> None:
        if kind in MODALITY_SLOTS:
            self._modality_part(path, kind, ref)
        elif kind == "fusion":
            self._fusion(ref)
        elif kind in ("head", "objective"):
            self._top(path, kind, ref)

    def _add(self, path: str, kind: str, ref: Any, ctx: Any, missing: str = "") -> Any:
        cost, note = ((None, missing) if missing
                      else _entry_cost(self.registry, kind, ref, ctx, path))
        self.rows.append(_row(path, kind, ref, cost, note))
        extra = getattr(cost, "generation", None)
        if extra is not None:
            self.generation = extra if self.generation is None else self.generation + extra
        self.figures += [(path, f) for f in getattr(cost, "figures", ())]
        return cost

    def _modality_part(self, path: str, kind: str, ref: Any) -> None:
        from mmcore.cost import CostContext

        name = path.split(".")[1]
        shape = self.shapes.setdefault(name, None)
        missing = "the tokenizer's output shape is unknown" if (
            kind == "encoder" and shape is None) else ""
        cost = self._add(path, kind, ref, CostContext(in_shape=shape), missing)
        if kind != "preprocessor":
            self.shapes[name] = cost.out if cost is not None else None

    def _fusion(self, ref: Any) -> None:
        from mmcore.cost import CostContext

        unknown = sorted(m for m, s in self.shapes.items() if s is None)
        missing = f"token shapes of {', '.join(unknown)} are unknown" if unknown else ""
        self.fusion = self._add("fusion", "fusion", ref,
                                CostContext(shapes=dict(sorted(self.shapes.items()))), missing)

    def _top(self, path: str, kind: str, ref: Any) -> None:
        from mmcore.cost import CostContext

        widths = dict(self.fusion.embeddings) if self.fusion is not None else None
        known = {m: s for m, s in sorted(self.shapes.items()) if s is not None}
        ctx = CostContext(shapes=known, embedding_widths=widths or {},
                          heads=dict(self.heads) if kind == "objective" else {})
        cost = self._add(path, kind, ref, ctx,
                         "" if widths is not None else "the fusion's widths are unknown")
        if kind == "head" and cost is not None and cost.out is not None:
            self.heads[path.split(".", 1)[1]] = cost.out.width


def analyse(spec: ModelSpec, registry: Registry | None = None, *, batch_size: int = 1,
            dtype: str = "fp32", built: dict[str, int] | None = None,
            context: int | None = None) -> CostSummary:
    """Analytic cost of ``spec`` from its components' cost functions; nothing is built.

    ``built`` (path -> parameters of the meta-built module) fills the cross-check column;
    ``context``: the context length of the generation figures (default: the model's).
    """
    from mmcore.cost import MEMORY_ASSUMPTIONS, training_memory
    from mmcore.plugins import get_registry

    walk = _CostWalk(spec, registry or get_registry())
    for path, kind, ref in spec.components():
        walk.visit(path, kind, ref)
    rows = walk.rows
    for row in rows:
        row.built_parameters = (built or {}).get(row.path)
    known = [r for r in rows if r.parameters is not None]
    params = sum(r.parameters or 0 for r in known)
    activations = sum(r.activations or 0 for r in known)
    memory = training_memory(params, activations, batch_size=batch_size, dtype=dtype)
    fusion = walk.fusion
    return CostSummary(
        rows, params, sum(r.flops or 0 for r in known), activations, len(known) < len(rows),
        {m: (s.tokens if s is not None else None) for m, s in sorted(walk.shapes.items())},
        (fusion.attention_scores or None) if fusion is not None else None, batch_size, dtype,
        {"weights": memory.weights, "gradients": memory.gradients,
         "optimizer": memory.optimizer, "activations": memory.activations,
         "total": memory.total},
        assumptions=[MEMORY_ASSUMPTIONS[dtype],
                     "every parameter trains (frozen ones would need no gradient or AdamW "
                     "state); no activation checkpointing, no sharding; framework workspace "
                     "and allocator overhead left out",
                     "activations: the tensors each layer saves for backward (inputs of "
                     "matrix products and norms, attention probabilities, MLP hidden units), "
                     "sequences at full length"],
        generation=generation_figures(walk.generation, context, batch_size, dtype),
        figures=[{"component": path, "name": f.name, "unit": f.unit,
                  "value": f.value + f.per_parameter * params} for path, f in walk.figures])



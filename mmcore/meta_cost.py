"""The cost of a component that registers no cost function, measured instead of derived:
the module is built on the meta device (no memory, whatever its size) and run under
``torch.utils.flop_counter.FlopCounterMode`` on meta inputs of the spec's shapes, so
``mmcore inspect`` counts it (with a note) instead of leaving the totals partial.

Inputs: encoders get Tokens of the shape the previous stage reported; fusions the
per-modality Tokens; heads pooled embeddings and token streams; tokenizers their entry's
``example`` (moved to the meta device). Parameters are exact. FLOPs follow FlopCounterMode
(2 per multiply-add, matrix products, convolutions and attention), as the analytic
convention does. Activations are not measured (0); objectives are counted without FLOPs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from mmcore.build_context import BuildContext
from mmcore.contract import FusionOutput, Tokens
from mmcore.cost import Cost, CostContext, Shape
from mmcore.kernels import KernelSet
from mmcore.registry import Entry

#: How a measured row's note begins (``mmcore inspect`` shows it).
NOTE = "no cost function: measured on the meta device (FlopCounterMode; activations left out)"


def measured_cost(entry: Entry, params: Any, ctx: CostContext, modality: str | None) -> Cost:
    """Parameters and forward FLOPs of ``entry`` built from ``params``, per sample."""
    from torch.utils.flop_counter import FlopCounterMode

    build_ctx = _build_context(ctx, modality)
    with torch.device("meta"):
        module = entry.factory(params, build_ctx)
    parameters = sum(p.numel() for p in module.parameters())
    if entry.kind == "objective" or not isinstance(module, torch.nn.Module):
        return Cost(params=parameters)
    args = _inputs(entry, module, ctx)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        output = module(*args)
    return Cost(params=parameters, flops=int(counter.get_total_flops()),
                out=_out_shape(module, output), embeddings=_embeddings(module))


def _build_context(ctx: CostContext, modality: str | None) -> BuildContext:
    return BuildContext(kernels=KernelSet(), modality=modality,
                        in_width=ctx.in_shape.width if ctx.in_shape is not None else None,
                        widths={m: s.width for m, s in ctx.shapes.items()},
                        embedding_widths=dict(ctx.embedding_widths), heads=dict(ctx.heads))


def _tokens(shape: Shape) -> Tokens:
    """Unpadded Tokens (no mask: a meta mask has no values to branch on). (1, N, D)"""
    return Tokens(torch.empty(1, shape.tokens, shape.width, device="meta"))


def _inputs(entry: Entry, module: torch.nn.Module, ctx: CostContext) -> tuple[Any, ...]:
    if entry.kind == "tokenizer":
        if entry.example is None:
            raise ValueError("a tokenizer without a cost function needs an example input")
        return (_to_meta(entry.example(module, 1, torch.Generator().manual_seed(0))),)
    if entry.kind == "encoder":
        if ctx.in_shape is None:
            raise ValueError("the input shape is unknown")
        return (_tokens(ctx.in_shape),)
    tokens = {m: _tokens(s) for m, s in ctx.shapes.items()}
    if entry.kind == "fusion":
        return (tokens,)
    embeddings = {n: torch.empty(1, w, device="meta") for n, w in ctx.embedding_widths.items()}
    return (FusionOutput(tokens, embeddings),)


def _to_meta(obj: Any) -> Any:
    """Every tensor in ``obj`` as an empty meta tensor of the same shape and dtype."""
    if isinstance(obj, torch.Tensor):
        return torch.empty(obj.shape, dtype=obj.dtype, device="meta")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: _to_meta(getattr(obj, f.name))
                                           for f in dataclasses.fields(obj) if f.init})
    if isinstance(obj, Mapping):
        return {k: _to_meta(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_meta(v) for v in obj)
    return obj


def _out_shape(module: torch.nn.Module, output: Any) -> Shape | None:
    if isinstance(output, Tokens):
        return Shape(int(output.x.shape[1]), int(output.x.shape[2]))
    size = getattr(module, "out_features", None)
    return Shape(1, size) if isinstance(size, int) else None


def _embeddings(module: torch.nn.Module) -> dict[str, int]:
    widths = getattr(module, "embedding_widths", None)
    return dict(widths) if isinstance(widths, Mapping) else {}

"""Plain-text rendering for the command line: tables, SI and binary units, and the
``mmcore inspect`` report of a :class:`mmcore.summary.ModelSummary`."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmcore.summary import ModelSummary


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
                 right: Sequence[int] = ()) -> str:
    """A plain-text table; columns in ``right`` are right-aligned (numbers)."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def number(value: Any) -> str:
    """A metric value for a table: floats to 4 decimals, integers with separators."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested metrics -> ``{"a.b": value}``; lists become comma-separated text."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            out[name] = ", ".join(str(v) for v in value)
        else:
            out[name] = value
    return out


def si(value: int | None, unit: str = "") -> str:
    """1234567 -> '1.23 M' (n/a for None)."""
    if value is None:
        return "n/a"
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value} {unit}".rstrip()


def binary_bytes(value: int | None) -> str:
    """Bytes in binary units: 1536 -> '1.50 KiB'."""
    if value is None:
        return "n/a"
    for scale, prefix in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if value >= scale:
            return f"{value / scale:.2f} {prefix}"
    return f"{value} B"


def count(value: int | None) -> str:
    """An integer with separators: 1234 -> '1,234' (n/a for None)."""
    return "n/a" if value is None else f"{value:,}"


def format_summary(summary: ModelSummary) -> str:
    """The human-readable ``mmcore inspect`` report."""
    title = summary.name + (f": {summary.description}" if summary.description else "")
    lines = [title, ""]
    if summary.cost is not None:
        lines += [_cost_table(summary), ""]
    else:
        lines += [_parameter_table(summary), ""]
    tokens = ", ".join(f"{m} {'?' if n is None else n}" for m, n in summary.tokens.items())
    lines.append(f"tokens per modality: {tokens}")
    if summary.trains is not None and summary.parameters:
        share = summary.trains / summary.parameters
        lines.append(f"trainable parameters (train.freeze and frozen modules left out): "
                     f"{summary.trains:,} of {summary.parameters:,} ({share:.2%})")
    lines += summary.details
    if summary.cost is not None:
        lines += _cost_notes(summary)
    if summary.reference is not None:
        lines += ["", *_reference_lines(summary)]
    if summary.compare:
        lines += ["", *_compare_lines(summary)]
    kernels = ", ".join(f"{op}={name}" for op, name in summary.kernels.items())
    lines += ["", f"kernels (this machine): {kernels or 'none'}"]
    return "\n".join(lines)


def _parameter_table(summary: ModelSummary) -> str:
    rows: list[list[Any]] = [[c.path, c.type, f"{c.parameters:,}", f"{c.trainable:,}"]
                             for c in summary.components]
    rows.append(["total", "", f"{summary.parameters:,}", f"{summary.trainable:,}"])
    return format_table(["component", "type", "parameters", "trainable"], rows, right=(2, 3))


def _cost_table(summary: ModelSummary) -> str:
    """One row per spec component: analytic cost beside the meta-built count."""
    cost = summary.cost
    assert cost is not None
    half = 2 if cost.dtype in ("bf16", "fp16") else 4
    per_batch = cost.batch_size * half
    rows: list[list[Any]] = []
    for c in cost.components:
        built = "-" if c.built_parameters is None else f"{c.built_parameters:,}"
        if c.built_parameters is not None and c.parameters not in (None, c.built_parameters):
            built += " (!)"
        acts = None if c.activations is None else c.activations * per_batch
        scores = "n/a" if c.parameters is None else count(c.attention_scores or None)
        rows.append([c.path, c.type, count(c.parameters), built, si(c.flops, "FLOP"),
                     binary_bytes(acts), scores.replace("n/a", "-") if c.parameters is not None
                     else scores])
    total = f"{cost.parameters:,}" + (" (partial)" if cost.partial else "")
    rows.append(["total", "", total, f"{summary.parameters:,}", si(cost.flops, "FLOP"),
                 binary_bytes(cost.activations * per_batch), ""])
    headers = ["component", "type", "parameters", "meta build", "forward FLOPs",
               f"activations (batch {cost.batch_size}, {cost.dtype})", "scores/head"]
    return format_table(headers, rows, right=(2, 3, 4, 5, 6))


def _cost_notes(summary: ModelSummary) -> list[str]:
    cost = summary.cost
    assert cost is not None
    lines = []
    if cost.attention_scores is not None:
        lines.append(f"attention scores per head in one fusion layer: "
                     f"{cost.attention_scores:,}")
    missing = [f"  {c.path}: {c.note}" for c in cost.components if c.parameters is None]
    if missing:
        lines += ["n/a (left out of the totals, which are therefore partial):", *missing]
    lines += [f"  {c.path}: {c.note}" for c in cost.components
              if c.parameters is not None and c.note]  # measured on the meta device
    differ = [c.path for c in cost.components if c.built_parameters is not None
              and c.parameters is not None and c.parameters != c.built_parameters]
    if differ:
        lines.append(f"(!) the analytic count differs from the built module: {', '.join(differ)}")
    memory = cost.memory
    lines += ["", *_wrap("FLOPs: " + cost.flops_convention),
              f"training memory (batch {cost.batch_size}, {cost.dtype}, AdamW): "
              f"weights {binary_bytes(memory['weights'])} + gradients "
              f"{binary_bytes(memory['gradients'])}"
              f" + optimizer {binary_bytes(memory['optimizer'])} + activations "
              f"{binary_bytes(memory['activations'])} = {binary_bytes(memory['total'])}"
              + (" (partial)" if cost.partial else "")]
    for assumption in cost.assumptions:
        lines += _wrap(f"assumes {assumption}", "  ")
    return lines + _generation_lines(cost) + _figure_lines(cost)


def _generation_lines(cost: Any) -> list[str]:
    """FLOPs per generated token and KV-cache memory, for models that decode."""
    gen = cost.generation
    if not gen:
        return []
    return ["", f"generation at context {gen['context']:,}: "
                f"{si(gen['flops_per_token'], 'FLOP')} per generated token "
                f"({gen['flops_per_token']:,}); KV cache {binary_bytes(gen['kv_cache_bytes'])} "
                f"({gen['kv_cache_bytes']:,} bytes, batch {cost.batch_size}, {cost.dtype})"]


def _figure_lines(cost: Any) -> list[str]:
    """The extra figures components' cost functions offer (:class:`mmcore.cost.Figure`)."""
    lines = []
    for f in cost.figures:
        value, unit = f["value"], f["unit"]
        short = binary_bytes(value) if unit == "B" else si(value, unit)
        lines.append(f"{f['component']}: {f['name']}: {short} ({value:,}"
                     + (f" {unit})" if unit else ")"))
    return ["", *lines] if lines else []


def _wrap(text: str, indent: str = "") -> list[str]:
    """``text`` wrapped to 100 columns, continuation lines indented two more spaces."""
    return textwrap.wrap(text, 100, initial_indent=indent, subsequent_indent=indent + "  ",
                         break_on_hyphens=False)


def _reference_lines(summary: ModelSummary) -> list[str]:
    from mmcore.summary import EXCLUSIONS

    ref = summary.reference
    assert ref is not None
    convention = ("every parameter" if not ref.excludes else "leaving out " + " and ".join(
        EXCLUSIONS[e] for e in ref.excludes))
    lines = [*_wrap(f"reference: {ref.source}"), *_wrap(f"its convention: {convention}", "  ")]
    rows: list[list[Any]] = []
    if ref.parameters is not None:
        rows.append(["parameters", f"{ref.parameters:,}", count(ref.counted),
                     _verdict(ref.parameters, ref.counted), count(ref.full),
                     _worth(ref.excluded)])
    if ref.layer_parameters is not None:
        rows.append([f"one layer of {ref.layer} (of {ref.layers})",
                     f"{ref.layer_parameters:,}", count(ref.layer_counted),
                     _verdict(ref.layer_parameters, ref.layer_counted), count(ref.layer_full),
                     _worth(ref.layer_excluded)])
    table = format_table(["", "reference", "mmcore, same convention", "", "mmcore, all",
                          "difference"], rows, right=(1, 2, 4))
    lines += ["  " + line for line in table.splitlines()]
    if ref.note:
        lines += _wrap(f"note: {ref.note}", "  ")
    return lines


def _verdict(reference: int, ours: int | None) -> str:
    if ours == reference:
        return "matches"
    return "n/a" if ours is None else f"differs by {ours - reference:+,}"


def _worth(excluded: Mapping[str, int]) -> str:
    """What the left-out parameters are worth: '+115,088 biases + 1 objectives'."""
    return " ".join(f"+{n:,} {name}" for name, n in excluded.items()) or "-"


def _compare_lines(summary: ModelSummary) -> list[str]:
    rows: list[list[Any]] = []
    for v in summary.compare:
        fusion = count(v.fusion_parameters)
        if v.fusion_parameters is not None and v.fusion_parameters != v.built_fusion_parameters:
            fusion += f" (built {count(v.built_fusion_parameters)}!)"
        scores = count(v.attention_scores) if v.attention_scores or v.note else "-"
        rows.append([v.name, v.fusion, fusion, si(v.fusion_flops, "FLOP"), scores,
                     f"{v.parameters:,}" + (" (partial)" if v.partial else ""),
                     si(v.flops, "FLOP")])
    headers = ["variant", "fusion", "fusion params", "fusion FLOPs", "scores/head",
               "model params", "model FLOPs"]
    notes = [f"  {v.name}: {v.note}" for v in summary.compare if v.note]
    return [*_wrap("fusion comparison (metadata.compare): forward FLOPs per sample; scores/head "
                   "= query-key scores per head in one layer of the fusion's largest attention"),
            format_table(headers, rows, right=(2, 3, 4, 5, 6)), *notes]

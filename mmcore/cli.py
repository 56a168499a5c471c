"""The ``mmcore`` command line: plugins, list, validate, inspect, kernels, train and eval.

Each command is a short function that takes the parsed arguments and returns an exit code.
Torch-heavy modules and the plugins are imported inside the commands. Errors mmcore raises
on purpose print one line per problem, without a traceback (``--debug`` shows it): exit
code 2 for an invalid spec or command line, 1 for any other failure.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmcore.errors import MMCoreError, SpecError, suggest

if TYPE_CHECKING:
    from mmcore.plugins import PluginInfo
    from mmcore.spec import ModelSpec
    from mmcore.summary import ModelSummary

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
DEBUG_ENV = "MMCORE_DEBUG"


class UsageError(MMCoreError):
    """Bad command-line input, such as an unknown kind (exit code 2)."""


# ----------------------------------------------------------------------------- output


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


def print_json(data: Any) -> None:
    """``data`` as indented JSON on stdout (tensors and paths as strings)."""
    print(json.dumps(data, indent=2, default=_json_default))


def _json_default(value: Any) -> Any:
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError, RuntimeError):
            pass
    return str(value)


def _number(value: Any) -> str:
    """A metric value for a table: floats to 4 decimals, integers with separators."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


# ----------------------------------------------------------------------------- helpers


def _load_spec(source: str) -> ModelSpec:
    """A spec from a YAML path or a preset name (SpecError lists every problem)."""
    import mmcore

    return mmcore.load_spec(source)


def _normalise_kind(kind: str | None, kinds: Sequence[str]) -> str | None:
    """``kind`` as the registry spells it (plurals accepted), or UsageError with a hint."""
    if kind is None or kind in kinds:
        return kind
    if kind.removesuffix("s") in kinds:
        return kind.removesuffix("s")
    hint = suggest(kind, kinds)
    raise UsageError(f"unknown kind {kind!r}.{hint} Kinds: {', '.join(kinds)}")


def _glob(pattern: str) -> str:
    """A pattern without wildcards matches as a substring."""
    return pattern if any(ch in pattern for ch in "*?[") else f"*{pattern}*"


def _grouped(registered: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    """(kind, name) pairs -> kind: names, in registration order."""
    groups: dict[str, list[str]] = {}
    for kind, name in registered:
        groups.setdefault(kind, []).append(name)
    return groups


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


# ----------------------------------------------------------------------------- commands


def cmd_plugins(args: argparse.Namespace) -> int:
    """List every plugin, where it came from, whether it loaded and what it registers."""
    from mmcore.plugins import plugin_infos

    infos = plugin_infos()
    if args.json:
        print_json([info.as_dict() for info in infos])
        return EXIT_OK
    for info in infos:
        print(_plugin_heading(info))
        for kind, names in _grouped(info.registered).items():
            print(f"    {kind}: {', '.join(names)}")
    return EXIT_OK


def _plugin_heading(info: PluginInfo) -> str:
    status = info.status + (f": {info.error}" if info.error else "")
    return f"{info.name} {info.version} ({info.source}) {status}"


def cmd_list(args: argparse.Namespace) -> int:
    """List registered names of one kind (or all), with the plugin that owns each."""
    from mmcore.plugins import get_registry

    registry = get_registry()
    kind = _normalise_kind(args.kind, registry.kinds())
    entries = registry.list(kind, _glob(args.pattern))
    if args.json:
        print_json([entry.describe() for entry in entries])
        return EXIT_OK
    if not entries:
        print(f"no {kind or 'component'} matches {args.pattern!r}", file=sys.stderr)
        return EXIT_OK
    columns = ["kind", "name", "plugin", "summary"] + (["location"] if args.long else [])
    print(format_table(columns, [[getattr(e, c) for c in columns] for e in entries]))
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    """Load and fully validate each spec (a meta-device build: nothing is allocated)."""
    code = EXIT_OK
    for source in args.specs:
        try:
            name, total = _validate_one(source)
        except SpecError as exc:
            report_error(exc)
            code = EXIT_USAGE
            continue
        print(f"ok: {name} ({total:,} parameters)")
    return code


def _validate_one(source: str) -> tuple[str, int]:
    from mmcore.builder import build
    from mmcore.summary import count_parameters

    spec = _load_spec(source)
    total, _ = count_parameters(build(spec, device="meta"))
    return spec.name, total


def cmd_inspect(args: argparse.Namespace) -> int:
    """Analyse a spec without allocating it: per component, the parameters, forward FLOPs,
    activation memory and attention scores per head, computed from the components' cost
    functions; training memory at a batch size and dtype; the parameter counts of the model
    built on the meta device as a cross-check; the spec's reference figures and fusion
    comparison (metadata.reference, metadata.compare) when it has them."""
    from mmcore.summary import summarize

    summary = summarize(_load_spec(args.spec), batch_size=args.batch_size, dtype=args.dtype)
    if args.json:
        print_json(summary.as_dict())
    else:
        print(format_summary(summary))
    return EXIT_OK


def _si(value: int | None, unit: str = "") -> str:
    """1234567 -> '1.23 M' (n/a for None)."""
    if value is None:
        return "n/a"
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value} {unit}".rstrip()


def _bytes(value: int | None) -> str:
    """Bytes in binary units: 1536 -> '1.50 KiB'."""
    if value is None:
        return "n/a"
    for scale, prefix in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if value >= scale:
            return f"{value / scale:.2f} {prefix}"
    return f"{value} B"


def _count(value: int | None) -> str:
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
        scores = "n/a" if c.parameters is None else _count(c.attention_scores or None)
        rows.append([c.path, c.type, _count(c.parameters), built, _si(c.flops, "FLOP"),
                     _bytes(acts), scores.replace("n/a", "-") if c.parameters is not None
                     else scores])
    total = f"{cost.parameters:,}" + (" (partial)" if cost.partial else "")
    rows.append(["total", "", total, f"{summary.parameters:,}", _si(cost.flops, "FLOP"),
                 _bytes(cost.activations * per_batch), ""])
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
    differ = [c.path for c in cost.components if c.built_parameters is not None
              and c.parameters is not None and c.parameters != c.built_parameters]
    if differ:
        lines.append(f"(!) the analytic count differs from the built module: {', '.join(differ)}")
    memory = cost.memory
    lines += ["", *_wrap("FLOPs: " + cost.flops_convention),
              f"training memory (batch {cost.batch_size}, {cost.dtype}, AdamW): "
              f"weights {_bytes(memory['weights'])} + gradients {_bytes(memory['gradients'])}"
              f" + optimizer {_bytes(memory['optimizer'])} + activations "
              f"{_bytes(memory['activations'])} = {_bytes(memory['total'])}"
              + (" (partial)" if cost.partial else "")]
    for assumption in cost.assumptions:
        lines += _wrap(f"assumes {assumption}", "  ")
    return lines


def _wrap(text: str, indent: str = "") -> list[str]:
    """``text`` wrapped to 100 columns, continuation lines indented two more spaces."""
    import textwrap

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
        rows.append(["parameters", f"{ref.parameters:,}", _count(ref.counted),
                     _verdict(ref.parameters, ref.counted), _count(ref.full),
                     _worth(ref.excluded)])
    if ref.layer_parameters is not None:
        rows.append([f"one layer of {ref.layer} (of {ref.layers})",
                     f"{ref.layer_parameters:,}", _count(ref.layer_counted),
                     _verdict(ref.layer_parameters, ref.layer_counted), _count(ref.layer_full),
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
        fusion = _count(v.fusion_parameters)
        if v.fusion_parameters is not None and v.fusion_parameters != v.built_fusion_parameters:
            fusion += f" (built {_count(v.built_fusion_parameters)}!)"
        scores = _count(v.attention_scores) if v.attention_scores or v.note else "-"
        rows.append([v.name, v.fusion, fusion, _si(v.fusion_flops, "FLOP"), scores,
                     f"{v.parameters:,}" + (" (partial)" if v.partial else ""),
                     _si(v.flops, "FLOP")])
    headers = ["variant", "fusion", "fusion params", "fusion FLOPs", "scores/head",
               "model params", "model FLOPs"]
    notes = [f"  {v.name}: {v.note}" for v in summary.compare if v.note]
    return [*_wrap("fusion comparison (metadata.compare): forward FLOPs per sample; scores/head "
                   "= query-key scores per head in one layer of the fusion's largest attention"),
            format_table(headers, rows, right=(2, 3, 4, 5, 6)), *notes]


def cmd_kernels(args: argparse.Namespace) -> int:
    """Show which implementation of each op this hardware gets, and why."""
    from mmcore.kernels import detect_hardware, explain

    hardware = detect_hardware(args.device)
    rows = explain(hardware)
    if args.json:
        print_json({"hardware": hardware.describe(), "device": hardware.device,
                    "kernels": rows})
        return EXIT_OK
    print(f"hardware: {hardware.describe()}")
    columns = ["op", "candidate", "status", "reason"]
    print(format_table(columns, [[row[c] for c in columns] for row in rows]))
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    """Train a spec's model on its data. DIR receives checkpoints, metrics (metrics.jsonl,
    metrics.csv, loss.png), the spec and the final model.safetensors."""
    from mmcore.parallel import launch_rank
    from mmcore.train import train

    spec = _train_overrides(_load_spec(args.spec), args)
    checkpoint = train(spec, Path(args.out), resume=args.resume, steps=args.steps,
                       progress=not args.no_progress, device=args.device,
                       stop_after=args.stop_after, overwrite=args.overwrite)
    if launch_rank() != 0:  # under torchrun rank 0 alone reports
        return EXIT_OK
    print(f"checkpoint: {checkpoint}")
    if checkpoint != Path(args.out) / "model.safetensors":
        print(f"continue: mmcore train {args.spec} --out {args.out} --resume")
    elif _is_contrastive(spec):
        print(f"evaluate: mmcore eval {args.out} --task zero-shot  (or --task retrieval)")
    return EXIT_OK


def _train_overrides(spec: ModelSpec, args: argparse.Namespace) -> ModelSpec:
    """The spec with ``train:`` settings replaced by the train command's options."""
    from mmcore.errors import SpecIssue
    from mmcore.spec import TrainSpec

    given = {"strategy": args.strategy, "precision": args.precision,
             "grad_accum_steps": args.grad_accum, "tensorboard": args.tensorboard or None}
    changes = {k: v for k, v in given.items() if v is not None}
    if not changes:
        return spec
    try:
        train = TrainSpec.model_validate({**spec.train.model_dump(), **changes})
    except ValueError as exc:
        raise SpecError([SpecIssue("train", str(exc))], args.spec) from None
    return spec.model_copy(update={"train": train})


def _is_contrastive(spec: ModelSpec) -> bool:
    """Whether ``mmcore eval`` applies: an objective that pairs modalities."""
    return any("pairs" in ref.params for ref in spec.objectives.values())


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a trained contrastive model (a run folder, checkpoint folder or .safetensors
    file) on its spec's evaluation data."""
    path = Path(args.checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint or run folder at {path}")
    from mmcore.evaluate import evaluate

    options: dict[str, Any] = {"progress": not args.no_progress, "device": args.device,
                               "limit": args.limit}
    if args.batch_size is not None:
        options["batch_size"] = args.batch_size
    if args.data is not None:
        options["dataset"] = _eval_dataset(args.data, args.templates)
    elif args.templates is not None:
        raise UsageError("--templates needs --data (a dataset that takes templates)")
    if args.pair is not None:
        options["pair"] = _pair(args.pair)
    metrics = evaluate(path, args.task, **options)
    if args.json:
        print_json({"checkpoint": str(path), **metrics})
    else:
        print(f"{args.task} on {path}")
        rows = [[key, _number(value)] for key, value in flatten(metrics).items()
                if key != "task"]
        print(format_table(["metric", "value"], rows, right=(1,)))
    return EXIT_OK


def _eval_dataset(text: str, templates: str | None = None) -> Any:
    """``--data`` -> that dataset's eval split. ``text``: a YAML mapping
    (``'{type: audio-folder, root: DIR}'``), a .yaml/.json file holding one, or
    ``TYPE:PATH`` (PATH fills the dataset's ``path`` or ``root``). ``templates`` sets the
    dataset's ``templates`` parameter."""
    from mmcore.data import EVAL, open_dataset
    from mmcore.spec import ComponentRef, parse_yaml

    file = Path(text)
    if file.suffix in (".yaml", ".yml", ".json") and file.is_file():
        data, _ = parse_yaml(file.read_text(encoding="utf-8"), str(file))
    elif re.fullmatch(r"[\w.-]+:\S.*", text, flags=re.DOTALL):  # not YAML's "key: value"
        data = _typed_path(*text.split(":", 1))
    else:
        data, _ = parse_yaml(text, "--data")
    if not isinstance(data, Mapping) or not isinstance(data.get("type"), str):
        raise UsageError("--data takes TYPE:PATH or a YAML mapping with a type, e.g. "
                         "image-folder:photos/ or '{type: audio-folder, root: sounds/}'")
    data = dict(data) | ({"templates": templates} if templates is not None else {})
    return open_dataset(ComponentRef.model_validate(data), EVAL)


def _typed_path(kind: str, path: str) -> dict[str, Any]:
    """``TYPE:PATH`` -> ``{type, path}`` or ``{type, root}``, whichever the dataset takes."""
    from mmcore.plugins import get_registry

    fields = get_registry().get("dataset", kind).config.model_fields
    key = next((k for k in ("path", "root") if k in fields), None)
    if key is None:
        raise UsageError(f"dataset {kind!r} takes no path or root; give --data as a YAML "
                         "mapping of its parameters")
    return {"type": kind, key: path}


def _pair(text: str) -> tuple[str, str]:
    names = [n.strip() for n in text.split(",")]
    if len(names) != 2 or not all(names):
        raise UsageError(f"--pair takes two modality names, e.g. image,text; got {text!r}")
    return names[0], names[1]


def cmd_import(args: argparse.Namespace) -> int:
    """Import a foreign checkpoint (e.g. a Hugging Face folder with config.json and
    model.safetensors) as an mmcore model and save it as one safetensors file that holds
    its spec. The format is detected unless --format names it (mmcore list converter)."""
    import mmcore
    from mmcore.convert import find_converter, import_model

    fmt, _ = find_converter(args.source, args.format)
    model = import_model(args.source, fmt)
    out = mmcore.save(model, args.out)
    total = sum(p.numel() for p in model.parameters())
    print(f"imported {args.source} as {fmt}: {total:,} parameters -> {out}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    """Export an mmcore checkpoint to a foreign format (e.g. a Hugging Face folder)."""
    import mmcore
    from mmcore.convert import export_model

    out = export_model(mmcore.load(args.checkpoint), args.out, args.format)
    print(f"exported {args.checkpoint} as {args.format} -> {out}")
    return EXIT_OK


def cmd_transcribe(args: argparse.Namespace) -> int:
    """Transcribe audio files (WAV) with a speech-to-text model: an mmcore checkpoint (from
    mmcore import) or a foreign checkpoint folder a converter recognises, such as a Hugging
    Face Whisper folder (imported in memory). Prints each file's text; --timestamps prints
    segments; --json prints {"audio", "language", "text", "segments": [{"start", "end",
    "text"}]} per file."""
    model = _load_any_model(args.model)
    head = next((h for h in model.heads.values() if callable(getattr(h, "transcribe", None))),
                None)
    if head is None:
        raise UsageError(f"{args.model} has no head that transcribes audio (heads: "
                         f"{', '.join(sorted(model.heads)) or 'none'})")
    results = head.transcribe(model, args.audio, beam_size=args.beam_size,
                              language=args.language, task=args.task,
                              timestamps=args.timestamps, tokenizer=args.tokenizer)
    if args.json:
        print_json([{"audio": a, **r} for a, r in zip(args.audio, results, strict=True)])
        return EXIT_OK
    for audio, result in zip(args.audio, results, strict=True):
        prefix = f"{audio}: " if len(args.audio) > 1 else ""
        if not args.timestamps:
            print(prefix + result["text"].strip())
            continue
        for seg in result["segments"]:
            print(f"{prefix}[{seg['start']:7.2f} --> {seg['end']:7.2f}] {seg['text'].strip()}")
    return EXIT_OK


def _load_any_model(source: str) -> Any:
    """An mmcore checkpoint (file or folder), or a folder a registered converter detects."""
    import mmcore
    from mmcore.convert import find_converter, import_model
    from mmcore.errors import CheckpointError

    path = Path(source)
    if not path.is_dir():
        return mmcore.load(path)
    try:
        fmt, _ = find_converter(path)
    except CheckpointError:
        try:
            return mmcore.load(path)
        except CheckpointError:
            raise CheckpointError(f"{path} is neither an mmcore checkpoint nor a folder a "
                                  "converter recognises (mmcore list converter)") from None
    return import_model(path, fmt)


def cmd_shards(args: argparse.Namespace) -> int:
    """Tar shards in the webdataset layout (img2dataset's): 'write' packs a folder of files
    (000000000.jpg, 000000000.txt, ...) with its captions; 'info' counts what a folder holds
    (--scan reads every shard through and reports corrupt ones)."""
    from mmcore.shards import shard_info, write_shards

    if args.shards_command == "write":
        index = write_shards(args.src, args.out, shard_size=args.shard_size,
                             captions=args.captions, prefix=args.prefix,
                             overwrite=args.overwrite)
        print(f"wrote {index['samples']:,} samples in {len(index['shards'])} shards -> "
              f"{Path(args.out) / index['pattern']} ({index['uncaptioned']:,} without a caption)")
        return EXIT_OK
    info = shard_info(args.dir, scan=args.scan)
    bad = [s for s in info["shards"] if s.get("problem")]
    if args.json:
        print_json(info)
        return EXIT_FAILURE if bad else EXIT_OK
    rows = [[s["name"], _count(s["samples"]), _bytes(s["bytes"]), s.get("problem") or ""]
            for s in info["shards"]]
    print(format_table(["shard", "samples", "size", "problem"], rows, right=(1, 2)))
    exts = ", ".join(f"{ext} {n:,}" for ext, n in info["extensions"].items())
    print(f"{info['samples']:,} samples in {len(rows)} shards (from the {info['source']}); "
          f"members: {exts or 'none'}")
    for shard in bad:
        print(f"problem: {shard['name']}: {shard['problem']}", file=sys.stderr)
    return EXIT_FAILURE if bad else EXIT_OK


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


# ----------------------------------------------------------------------------- parser

_EXAMPLES = """\
examples:
  mmcore plugins                      what is installed and what each plugin registers
  mmcore list encoder --pattern vit   registered encoders whose name contains 'vit'
  mmcore validate my-model.yaml       check a spec without allocating anything
  mmcore inspect clip-vit-b-32        parameters per component of a preset
  mmcore train clip-tiny --out runs/clip-tiny
  mmcore eval runs/clip-tiny --task zero-shot
"""


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _command(sub: Any, name: str, func: Callable[[argparse.Namespace], int],
             summary: str, epilog: str | None = None) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=summary, description=inspect.cleandoc(func.__doc__ or summary), epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(func=func)
    return parser


def _add_inspection_commands(sub: Any) -> None:
    p = _command(sub, "plugins", cmd_plugins, "list plugins, their status and registrations",
                 "Plugins come from registry.yaml (builtin) and the 'mmcore.plugins' entry-point\n"
                 "group; MMCORE_PLUGINS_ALLOW / MMCORE_PLUGINS_BLOCK (comma-separated globs)\n"
                 "choose which load.")
    _add_json(p)
    p = _command(sub, "list", cmd_list, "list registered components, optionally of one kind",
                 "kinds: preprocessor, tokenizer, encoder, fusion, head, objective, dataset, "
                 "preset")
    p.add_argument("kind", nargs="?", metavar="KIND",
                   help="one kind of component (plural forms work too)")
    p.add_argument("--pattern", default="*",
                   help="glob on the name; without wildcards it matches a substring")
    p.add_argument("-l", "--long", action="store_true", help="also show file:line of each")
    _add_json(p)
    p = _command(sub, "kernels", cmd_kernels, "show the kernel chosen for each op here, and why",
                 "MMCORE_KERNEL_<OP>=<candidate> (e.g. MMCORE_KERNEL_ATTENTION=reference) forces "
                 "a choice.")
    p.add_argument("--device", default=None,
                   help="device to explain for, e.g. cpu or cuda (default: cuda if present)")
    _add_json(p)


def _add_spec_commands(sub: Any) -> None:
    p = _command(sub, "validate", cmd_validate, "check specs fully without allocating memory",
                 "Prints 'ok: NAME (N parameters)' per spec, or every problem with its key path\n"
                 "and YAML line. Exit code 2 if any spec is invalid.")
    p.add_argument("specs", nargs="+", metavar="SPEC", help="a YAML file or a preset name")
    p = _command(sub, "inspect", cmd_inspect,
                 "parameters, FLOPs, memory and attention cost per component",
                 "Costs are analytic (2 FLOPs per multiply-add, per sample); the model is also\n"
                 "built on the meta device as a cross-check, so even large models cost no\n"
                 "memory. example: mmcore inspect fusion-compare")
    p.add_argument("spec", metavar="SPEC", help="a YAML file or a preset name")
    p.add_argument("--batch-size", type=_positive_int, default=1, metavar="N",
                   help="batch size for activation and training memory (default 1)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="training precision for memory (bf16/fp16: mixed precision with fp32 "
                        "master weights; default fp32)")
    _add_json(p)


def _add_run_commands(sub: Any) -> None:
    p = _command(sub, "train", cmd_train, "train a model from a spec",
                 "example: mmcore train clip-tiny --out runs/clip-tiny --steps 200\n"
                 "several processes: torchrun --nproc_per_node 2 -m mmcore train clip-tiny "
                 "--out runs/clip-tiny")
    p.add_argument("spec", metavar="SPEC", help="a YAML file or a preset name")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder for checkpoints")
    p.add_argument("--resume", action="store_true",
                   help="continue from DIR's newest complete checkpoint (fresh if none)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete an earlier run in DIR and start again")
    p.add_argument("--steps", type=_positive_int, metavar="N",
                   help="train N steps in all (default: the spec's train.steps)")
    p.add_argument("--stop-after", type=_positive_int, metavar="N",
                   help="stop at step N with a checkpoint; --resume continues later")
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--strategy", choices=["auto", "ddp", "fsdp"],
                   help="under torchrun: ddp or fsdp (FSDP2); auto = ddp (default: the spec's "
                        "train.strategy)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"],
                   help="autocast precision; fp16 adds a gradient scaler (default: the spec's)")
    p.add_argument("--grad-accum", type=_positive_int, metavar="N",
                   help="micro-batches per optimizer step (default: the spec's)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard events to DIR/tensorboard")
    p = _command(sub, "eval", cmd_eval, "evaluate a trained checkpoint",
                 "examples:\n  mmcore eval runs/clip-tiny --task retrieval --json\n"
                 "  mmcore eval clip.safetensors --task zero-shot --data image-folder:photos/ "
                 "--templates simple")
    p.add_argument("checkpoint", metavar="CKPT",
                   help="a run folder, a checkpoint folder or a .safetensors file")
    p.add_argument("--task", required=True, choices=["zero-shot", "retrieval"],
                   help="zero-shot: classify by prompts of the class names (top-1/top-5); "
                        "retrieval: recall@k both ways between the paired modalities")
    p.add_argument("--batch-size", type=_positive_int, metavar="N",
                   help="items embedded at once (default: evaluate's own)")
    p.add_argument("--limit", type=_positive_int, metavar="N",
                   help="evaluate only the first N items of the evaluation data")
    p.add_argument("--data", metavar="DATA",
                   help="evaluate on this dataset instead of the spec's: TYPE:PATH (e.g. "
                        "image-folder:photos/), a YAML/JSON dataset file, or a YAML mapping "
                        "(e.g. '{type: audio-folder, root: sounds/}'); mmcore list dataset")
    p.add_argument("--templates", metavar="SET",
                   help="zero-shot prompt templates for --data: a set name (openai, simple) "
                        "or a text file, one template per line")
    p.add_argument("--pair", metavar="A,B",
                   help="classified and prompt modalities (default: the contrastive "
                        "objective's first pair), e.g. image,text")
    p.add_argument("--device", default=None, help="torch device (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    _add_json(p)


def _add_convert_commands(sub: Any) -> None:
    p = _command(sub, "import", cmd_import, "import a foreign checkpoint as an mmcore model",
                 "example: mmcore import ./clip-vit-base-patch32 --out clip.safetensors")
    p.add_argument("source", metavar="SOURCE", help="a checkpoint folder or file")
    p.add_argument("--out", required=True, metavar="FILE", help="mmcore .safetensors to write")
    p.add_argument("--format", default=None, help="converter name (default: detect)")
    p = _command(sub, "export", cmd_export, "export an mmcore checkpoint to a foreign format",
                 "example: mmcore export clip.safetensors --format hf-clip --out ./hf-clip")
    p.add_argument("checkpoint", metavar="CKPT", help="an mmcore checkpoint or run folder")
    p.add_argument("--format", required=True, help="converter name (mmcore list converter)")
    p.add_argument("--out", required=True, metavar="DIR", help="where to write")
    p = _command(sub, "transcribe", cmd_transcribe, "transcribe audio with a speech model",
                 "examples:\n  mmcore transcribe ./whisper-tiny talk.wav\n"
                 "  mmcore transcribe whisper.safetensors a.wav b.wav --timestamps --json\n"
                 "Audio longer than 30 s is decoded in 30 s windows.")
    p.add_argument("model", metavar="MODEL",
                   help="an mmcore checkpoint, or a foreign folder (e.g. Hugging Face Whisper)")
    p.add_argument("audio", nargs="+", metavar="AUDIO", help="WAV files")
    p.add_argument("--beam-size", type=_positive_int, default=1, metavar="N",
                   help="beam search with N beams (default 1: greedy)")
    p.add_argument("--language", default=None, metavar="CODE",
                   help="spoken language code, e.g. en (default: detect; none for .en models)")
    p.add_argument("--task", choices=["transcribe", "translate"], default="transcribe",
                   help="translate: into English (multilingual models)")
    p.add_argument("--timestamps", action="store_true",
                   help="predict timestamps; print segments with their times")
    p.add_argument("--tokenizer", default=None, metavar="FILE",
                   help="tokenizer.json to use instead of the one the checkpoint names")
    _add_json(p)


def _add_shards_commands(sub: Any) -> None:
    p = _command(sub, "shards", cmd_shards, "write and inspect tar shards (webdataset layout)",
                 "examples:\n  mmcore shards write photos/ --out shards/ --captions captions.csv\n"
                 "  mmcore shards info shards/ --scan")
    shards = p.add_subparsers(dest="shards_command", metavar="ACTION", required=True)
    w = shards.add_parser("write", help="pack a folder of files (+ captions) into shards",
                          description="Files sharing a name up to the last suffix form one "
                          "sample; keys are zero-padded in sorted order. Each shard is written "
                          "atomically; index.json lists shards and sample counts.")
    w.add_argument("src", metavar="SRC", help="folder of files (e.g. cat.jpg + cat.txt)")
    w.add_argument("--out", required=True, metavar="DIR", help="folder for the shards")
    w.add_argument("--shard-size", type=_positive_int, default=1000, metavar="N",
                   help="samples per shard (default 1000)")
    w.add_argument("--captions", metavar="FILE", help="CSV (file,caption columns) or JSONL "
                   "mapping file names to captions; default: a sidecar .txt per file")
    w.add_argument("--prefix", default="data", help="shard file prefix (default 'data')")
    w.add_argument("--overwrite", action="store_true", help="replace shards already in DIR")
    i = shards.add_parser("info", help="shard names and sample counts of a folder")
    i.add_argument("dir", metavar="DIR", help="a folder of shards")
    i.add_argument("--scan", action="store_true",
                   help="read every shard instead of trusting index.json; exit 1 on problems")
    _add_json(i)


def build_parser() -> argparse.ArgumentParser:
    """The ``mmcore`` argument parser with every subcommand."""
    from mmcore import __version__

    parser = argparse.ArgumentParser(
        prog="mmcore", description="Compose, train and evaluate multimodal transformers.",
        epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"mmcore {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help=f"show tracebacks of errors (or set {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_inspection_commands(sub)
    _add_spec_commands(sub)
    _add_run_commands(sub)
    _add_convert_commands(sub)
    _add_shards_commands(sub)
    return parser


# ----------------------------------------------------------------------------- entry point


def report_error(exc: BaseException) -> None:
    """Print ``exc`` as ``error: ...`` on stderr, one line per problem, no traceback."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        message = f"{exc.strerror}: {exc.filename}"
    print(f"error: {message}", file=sys.stderr)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    print(f"warning: {message}", file=sys.stderr)


@contextmanager
def _concise_warnings() -> Iterator[None]:
    """Warnings (e.g. a plugin that failed to load) as one ``warning:`` line each."""
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        yield


def _exit_code(exc: BaseException) -> int:
    return EXIT_USAGE if isinstance(exc, (SpecError, UsageError)) else EXIT_FAILURE


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed command, turning expected errors into a message and an exit code."""
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        with _concise_warnings():
            code: int = args.func(args)
            return code
    except (MMCoreError, OSError, ValueError) as exc:
        if debug:
            raise
        report_error(exc)
        return _exit_code(exc)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    """``mmcore`` entry point; returns the exit code (0 ok, 1 failure, 2 bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE if exc.code else EXIT_OK
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    return run_command(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The ``mmcore`` command line: the core verbs (plugins, list, describe, validate, inspect,
kernels, train, eval, import, export) and the verbs plugins add through
``register_commands`` (see :mod:`mmcore.commands`).

Each command is a short function that takes the parsed arguments and returns an exit code.
Torch-heavy modules are imported inside the commands. Errors mmcore raises on purpose print
one line per problem, without a traceback (``--debug`` shows it): exit code 2 for an invalid
spec or command line, 1 for any other failure.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mmcore import listing, scaffold
from mmcore._version import __version__
from mmcore.boundary import DEBUG_ENV, concise_warnings, report_error, run_command
from mmcore.commands import (
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    add_json_flag,
    add_plugin_commands,
    positive_int,
    print_json,
)
from mmcore.errors import SpecError
from mmcore.registry import KINDS
from mmcore.report import flatten, format_summary, format_table
from mmcore.report import number as _number
from mmcore.train_command import (
    TRAIN_EXAMPLES,
    add_overrides,
    add_train_arguments,
    checked_device,
    cmd_train,
    load_spec_args,
    split_specs,
)

# ----------------------------------------------------------------------------- helpers


# ----------------------------------------------------------------------------- commands


def cmd_validate(args: argparse.Namespace) -> int:
    """Fully validate each spec: params, training options, neighbouring components, the
    data's first item and a meta-device build (nothing large is allocated)."""
    specs, overrides = split_specs([*args.specs, *args.overrides])
    if not specs:
        raise UsageError("validate needs a spec (a YAML file or a preset name) before "
                         "KEY=VALUE overrides")
    code = EXIT_OK
    for source in specs:
        if not _validate_one(source, data=not args.no_data, strict=args.strict,
                             overrides=overrides):
            code = EXIT_USAGE
    return code


def _validate_one(source: str, *, data: bool = True, strict: bool = False,
                  overrides: Sequence[str] = ()) -> bool:
    """Print one spec's problems (``error:``), warnings and notes, or ``ok: NAME (N
    parameters)``; True when it is valid (``strict``: and has no warnings)."""
    from mmcore.validation import validate_source

    report = validate_source(source, data=data, overrides=overrides)
    errors = report.errors + (report.warnings if strict else [])
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    if errors:
        report_error(SpecError(errors, report.source or report.name))
        return False
    for issue in report.warnings:
        print(f"warning: {issue}", file=sys.stderr)
    print(f"ok: {report.name} ({report.parameters or 0:,} parameters)")
    return True


def cmd_inspect(args: argparse.Namespace) -> int:
    """Analyse a spec without allocating it: per component, the parameters, forward FLOPs,
    activation memory and attention scores per head, computed from the components' cost
    functions; training memory at a batch size and dtype; the parameter counts of the model
    built on the meta device as a cross-check; the spec's reference figures and fusion
    comparison (metadata.reference, metadata.compare) when it has them."""
    from mmcore.summary import summarize

    spec = load_spec_args(args.spec, args.overrides)
    summary = summarize(spec, batch_size=args.batch_size, dtype=args.dtype,
                        context=args.context)
    if args.json:
        print_json(summary.as_dict())
    else:
        print(format_summary(summary))
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a trained contrastive model (a run folder, checkpoint folder or .safetensors
    file) on its spec's evaluation data."""
    path = Path(args.checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint or run folder at {path}")
    from mmcore.evaluate import evaluate

    options: dict[str, Any] = {"progress": not args.no_progress,
                               "device": checked_device(args.device), "limit": args.limit,
                               "split": args.split, **_probe_options(args)}
    if args.batch_size is not None:
        options["batch_size"] = args.batch_size
    if args.data is not None:
        options["dataset"] = _eval_dataset(args.data, args.templates, args.split)
    elif args.templates is not None:
        raise UsageError("--templates needs --data (a dataset that takes templates)")
    if args.pair is not None:
        options["pair"] = _pair(args.pair)
    from mmcore.evaluate import TASKS

    if args.task not in TASKS:  # a plugin's task: its own options go with it
        options.update({dest: getattr(args, dest) for dest in args.task_options})
    metrics = evaluate(path, args.task, **options)
    if args.json:
        print_json({"checkpoint": str(path), **metrics})
    else:
        print(f"{args.task} on {path}")
        _print_metrics(metrics)
    return EXIT_OK


def _long_list(value: Any) -> bool:
    """A list that would not fit a table cell: of mappings or lists, or over 60 chars."""
    return isinstance(value, list) and (
        any(isinstance(item, dict | list) for item in value)
        or len(", ".join(map(str, value))) > 60)


def _print_metrics(metrics: dict[str, Any]) -> None:
    """Metrics as a table; long lists (e.g. a task's ``examples``) after it, one item per
    line, so a long value does not widen the table (short lists stay in it, joined)."""
    lists = {key: value for key, value in metrics.items() if _long_list(value)}
    scalars = {key: value for key, value in metrics.items()
               if key != "task" and key not in lists}
    rows = [[key, _number(value)] for key, value in flatten(scalars).items()]
    print(format_table(["metric", "value"], rows, right=(1,)))
    for key, items in lists.items():
        print(f"\n{key}:")
        for item in items:
            print(f"  {item}")


def _probe_options(args: argparse.Namespace) -> dict[str, Any]:
    """The linear probe's options; UsageError when they are given to another task."""
    given = {"modality": args.modality, "train_limit": args.train_limit}
    options = {k: v for k, v in given.items() if v is not None}
    if options and args.task != "linear-probe":
        flags = ", ".join("--" + k.replace("_", "-") for k in options)
        raise UsageError(f"{flags} apply to --task linear-probe only")
    return options


def _eval_dataset(text: str, templates: str | None = None, split: str = "eval") -> Any:
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
    return open_dataset(ComponentRef.model_validate(data), split or EVAL)


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


# ----------------------------------------------------------------------------- parser

_EXAMPLES = """\
examples:
  mmcore plugins                      what is installed and what each plugin registers
  mmcore list encoder --pattern vit   registered encoders whose name contains 'vit'
  mmcore describe cross-attention     every parameter of a registered type
  mmcore validate my-model.yaml       check a spec without allocating anything
  mmcore inspect clip-vit-b-32        parameters per component of a preset
  mmcore train clip-tiny --out runs/clip-tiny
  mmcore eval runs/clip-tiny --task zero-shot
"""


def _command(sub: Any, name: str, func: Callable[[argparse.Namespace], int],
             summary: str, epilog: str | None = None) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=summary, description=inspect.cleandoc(func.__doc__ or summary), epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(func=func)
    return parser


def _add_inspection_commands(sub: Any) -> None:
    p = _command(sub, "plugins", listing.cmd_plugins,
                 "list plugins, their status and registrations",
                 "Plugins come from registry.yaml (builtin) and the 'mmcore.plugins' entry-point\n"
                 "group; MMCORE_PLUGINS_ALLOW / MMCORE_PLUGINS_BLOCK (comma-separated globs)\n"
                 "choose which load.")
    add_json_flag(p)
    p = _command(sub, "list", listing.cmd_list,
                 "list registered components, optionally of one kind",
                 f"kinds: {', '.join(KINDS)}\n'mmcore list pretrained': preset, hub name "
                 "and converter of the known pretrained weights (mmcore import SOURCE)")
    p.add_argument("kind", nargs="?", metavar="KIND",
                   help="one kind of component (plural forms work too), or 'pretrained'")
    p.add_argument("--pattern", default="*",
                   help="glob on the name; without wildcards it matches a substring")
    p.add_argument("-l", "--long", action="store_true", help="also show file:line of each")
    add_json_flag(p)
    p = _command(sub, "describe", listing.cmd_describe, "the parameters a registered type takes",
                 "examples:\n  mmcore describe cross-attention\n"
                 "  mmcore describe fusion late --json")
    p.add_argument("names", nargs="+", metavar="[KIND] NAME",
                   help="a registered name, optionally after its kind")
    add_json_flag(p)
    p = _command(sub, "kernels", listing.cmd_kernels,
                 "show the kernel chosen for each op here, and why",
                 "MMCORE_KERNEL_<OP>=<candidate> (e.g. MMCORE_KERNEL_ATTENTION=reference) forces "
                 "a choice.")
    p.add_argument("--device", default=None,
                   help="device to explain for, e.g. cpu or cuda (default: cuda if present)")
    add_json_flag(p)


def _add_spec_commands(sub: Any) -> None:
    p = _command(sub, "validate", cmd_validate, "check specs fully without allocating memory",
                 "Prints 'ok: NAME (N parameters)' per spec, or every problem with its key path\n"
                 "and YAML line. Exit code 2 if any spec is invalid.")
    p.add_argument("specs", nargs="+", metavar="SPEC",
                   help="a YAML file or a preset name; KEY=VALUE arguments override keys of "
                        "every spec given (train.lr=1e-4)")
    p.set_defaults(overrides=[])
    p.add_argument("--no-data", action="store_true",
                   help="do not read the dataset's first item (remote or large data)")
    p.add_argument("--strict", action="store_true",
                   help="treat warnings (e.g. parameters no objective reaches) as errors")
    p = _command(sub, "inspect", cmd_inspect,
                 "parameters, FLOPs, memory and attention cost per component",
                 "Costs are analytic (2 FLOPs per multiply-add, per sample); the model is also\n"
                 "built on the meta device as a cross-check, so even large models cost no\n"
                 "memory. example: mmcore inspect fusion-compare\n"
                 "         mmcore inspect clip-tiny modalities.image.encoder.layers=6")
    p.add_argument("spec", metavar="SPEC", help="a YAML file or a preset name")
    add_overrides(p)
    p.add_argument("--batch-size", type=positive_int, default=1, metavar="N",
                   help="batch size for activation and training memory (default 1)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="training precision for memory (bf16/fp16: mixed precision with fp32 "
                        "master weights; default fp32)")
    p.add_argument("--context", type=positive_int, default=None, metavar="N",
                   help="context length of the generation figures of decoding models (FLOPs "
                        "per token, KV-cache memory; default: the model's longest)")
    add_json_flag(p)


def _add_run_commands(sub: Any) -> None:
    p = _command(sub, "train", cmd_train, "train a model from a spec", TRAIN_EXAMPLES)
    add_train_arguments(p)
    p = _command(sub, "eval", cmd_eval, "evaluate a trained checkpoint",
                 "examples:\n  mmcore eval runs/clip-tiny --task retrieval --json\n"
                 "  mmcore eval clip.safetensors --task zero-shot --data image-folder:photos/ "
                 "--templates simple\n"
                 "  mmcore eval runs/clip-tiny --task linear-probe --split eval-seen\n"
                 "  mmcore eval runs/classifier --task classification --split eval-seen")
    p.add_argument("checkpoint", metavar="CKPT",
                   help="a run folder, a checkpoint folder or a .safetensors file")
    from mmcore.evaluate import TASKS

    plugin_tasks = _plugin_tasks()
    p.add_argument("--task", required=True, choices=[*TASKS, *plugin_tasks],
                   help="zero-shot: classify by prompts of the class names (top-1/top-5); "
                        "retrieval: recall@k both ways between the paired modalities; "
                        "classification: accuracy of the model's classification head; "
                        "linear-probe: logistic regression on frozen pooled features of the "
                        "train split, scored on the evaluated split; "
                        "the others come from plugins: " + (", ".join(
                            f"{n} ({s})" for n, s in plugin_tasks.items()) or "none"))
    p.add_argument("--split", default="eval", metavar="NAME",
                   help="the data split evaluated (default eval; shapes: eval = colour-shape "
                        "pairs never trained on, eval-seen = new images of trained pairs)")
    p.add_argument("--modality", metavar="NAME",
                   help="linear-probe: whose pooled features (default: the first modality)")
    p.add_argument("--train-limit", type=positive_int, metavar="N",
                   help="linear-probe: fit on the first N items of the train split only")
    p.add_argument("--batch-size", type=positive_int, metavar="N",
                   help="items embedded at once (default: evaluate's own)")
    p.add_argument("--limit", type=positive_int, metavar="N",
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
    p.add_argument("--device", default=None,
                   help="torch device: cpu, cuda, cuda:N or mps (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    add_json_flag(p)
    p.set_defaults(task_options=_add_task_arguments(p))


def _plugin_tasks() -> dict[str, str]:
    """Registered evaluation tasks -> their summaries."""
    from mmcore.plugins import get_registry

    return {e.name: e.summary for e in get_registry().list("task")}


def _add_task_arguments(parser: argparse.ArgumentParser) -> list[str]:
    """Each plugin task's own options, in a group per task; returns their dests. A task
    whose options cannot be added is left without them, with a warning naming it."""
    from mmcore.tasks import registered_tasks

    dests: list[str] = []
    for name, task in registered_tasks().items():
        before = {action.dest for action in parser._actions}
        try:
            task.add_arguments(parser.add_argument_group(f"--task {name}"))  # type: ignore[arg-type]
        except Exception as exc:  # a broken plugin task must not break eval
            warnings.warn(f"options of eval task {name!r} are left out: {exc}", stacklevel=2)
        dests += [a.dest for a in parser._actions if a.dest not in before]
    return dests


def _add_convert_commands(sub: Any) -> None:
    p = _command(sub, "import", cmd_import, "import a foreign checkpoint as an mmcore model",
                 "example: mmcore import ./clip-vit-base-patch32 --out clip.safetensors")
    p.add_argument("source", metavar="SOURCE",
                   help="a checkpoint folder or file, or a hub name hf://ORG/NAME[@REVISION] "
                        "(downloaded to the Hugging Face cache; HF_HUB_OFFLINE=1: cache only)")
    p.add_argument("--out", required=True, metavar="FILE", help="mmcore .safetensors to write")
    p.add_argument("--format", default=None, help="converter name (default: detect)")
    p = _command(sub, "export", cmd_export, "export an mmcore checkpoint to a foreign format",
                 "example: mmcore export clip.safetensors --format hf-clip --out ./hf-clip")
    p.add_argument("checkpoint", metavar="CKPT", help="an mmcore checkpoint or run folder")
    p.add_argument("--format", required=True, help="converter name (mmcore list converter)")
    p.add_argument("--out", required=True, metavar="DIR", help="where to write")
def _add_generate_command(sub: Any) -> None:
    from mmcore.generation import command as generate

    p = _command(sub, "generate", generate.run,
                 "generate text or images with any generative model (mmcore list generator)")
    generate.add_arguments(p)


def build_parser() -> argparse.ArgumentParser:
    """The ``mmcore`` argument parser: the core commands, then the plugins' commands."""
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
    _add_generate_command(sub)
    scaffold.add_command(sub, _command)
    parser.epilog = add_plugin_commands(sub) + _EXAMPLES
    return parser


# ----------------------------------------------------------------------------- entry point


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, letting KEY=VALUE overrides stand anywhere after a command that takes them
    (argparse alone takes them only right after the spec)."""
    args, extra = parser.parse_known_args(argv)
    if extra and isinstance(getattr(args, "overrides", None), list):
        from mmcore.overrides import is_override

        args.overrides += [e for e in extra if is_override(e)]
        extra = [e for e in extra if not is_override(e)]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """``mmcore`` entry point; returns the exit code (0 ok, 1 failure, 2 bad input)."""
    with concise_warnings():
        parser = build_parser()
    try:
        args = _parse(parser, argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE if exc.code else EXIT_OK
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    return run_command(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The core listing verbs: ``mmcore plugins``, ``list``, ``describe`` and ``kernels``."""

from __future__ import annotations

import argparse
import fnmatch
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mmcore.commands import EXIT_OK, UsageError, print_json
from mmcore.errors import suggest
from mmcore.report import format_table

if TYPE_CHECKING:
    from mmcore.plugins import PluginInfo


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

    if args.kind == PRETRAINED:
        return _list_pretrained(args)
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


#: ``mmcore list pretrained``: the presets' known pretrained sources, not a registry kind
PRETRAINED = "pretrained"


def _list_pretrained(args: argparse.Namespace) -> int:
    """Preset, hub name and converter of every known pretrained source (open_clip's
    ``list_pretrained``); ``mmcore import SOURCE`` converts one."""
    from mmcore.hub import pretrained_sources

    rows = [r for r in pretrained_sources()
            if fnmatch.fnmatch(r["preset"], _glob(args.pattern))
            or fnmatch.fnmatch(r["source"], _glob(args.pattern))]
    if args.json:
        print_json(rows)
        return EXIT_OK
    if not rows:
        print(f"no pretrained source matches {args.pattern!r}", file=sys.stderr)
        return EXIT_OK
    columns = ["preset", "source", "converter", "plugin"]
    print(format_table(columns, [[r[c] for c in columns] for r in rows]))
    return EXIT_OK


def cmd_describe(args: argparse.Namespace) -> int:
    """Show every parameter a registered type takes (type, default, constraint, comment),
    read from its plugin's config, with its summary, plugin and file:line. Give the kind
    first when a name is registered under several kinds (e.g. 'fusion late')."""
    from mmcore.describe import describe, find_entry, format_description
    from mmcore.plugins import get_registry

    info = describe(find_entry(get_registry(), args.names))
    if args.json:
        print_json(info)
    else:
        print(format_description(info))
    return EXIT_OK


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

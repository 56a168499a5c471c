"""What a plugin's CLI verb needs: the :class:`Command` record, exit codes, the usage error,
JSON output and model loading. Registered through the ``register_commands`` hook::

    @mmcore.hookimpl
    def register_commands(register):
        register("transcribe", add_arguments, run, summary="transcribe audio")

``add_arguments(parser)`` adds options to the verb's ``argparse`` parser; ``run(args)``
returns the exit code. Errors mmcore raises on purpose (:class:`mmcore.errors.MMCoreError`,
``OSError``, ``ValueError``) print one line; :class:`UsageError` exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

from mmcore.errors import MMCoreError
from mmcore.registry import Command

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "Command", "UsageError"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(MMCoreError):
    """Bad command-line input, such as an unknown kind (exit code 2)."""


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


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    """The ``--json`` option every listing command takes."""
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def positive_int(text: str) -> int:
    """An ``argparse`` type: an integer above zero."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def load_any_model(source: str | Path) -> Any:
    """An mmcore checkpoint (file or folder), or a folder a registered converter detects
    (imported in memory)."""
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


def _plugin_commands() -> list[Command]:
    """Every command the plugins register (none, with a warning, if they cannot load)."""
    from mmcore.plugins import get_registry

    try:
        registry = get_registry()
    except MMCoreError as exc:
        warnings.warn(f"no plugin commands: {exc}", stacklevel=2)
        return []
    return [entry.factory() for entry in registry.list("command")]


def _add_plugin_command(sub: Any, command: Command) -> bool:
    """Add one plugin's verb; False, with a warning naming the plugin, if it cannot be."""
    from mmcore.plugins import PluginWarning

    problem = "it clashes with a core command" if command.name in sub.choices else ""
    if not problem:
        try:
            parser = sub.add_parser(command.name, description=command.description,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
            parser.set_defaults(func=command.run)
            command.add_arguments(parser)
        except Exception as exc:  # a broken plugin command must not break the others
            del sub.choices[command.name]
            problem = f"{type(exc).__name__}: {exc}"
    if problem:
        warnings.warn(f"mmcore plugin {command.plugin!r}: command {command.name!r} is left "
                      f"out: {problem}", PluginWarning, stacklevel=2)
    return not problem


def add_plugin_commands(sub: Any) -> str:
    """Add every plugin's command to the subparsers ``sub``; returns them grouped by the
    plugin that owns each, for the ``mmcore --help`` epilog. A command that clashes with
    one already there or fails to add its arguments is left out with a warning."""
    sections: dict[str, list[str]] = {}
    for command in _plugin_commands():
        if _add_plugin_command(sub, command):
            sections.setdefault(command.plugin, []).append(
                f"    {command.name:<20} {command.summary}".rstrip())
    if not sections:
        return ""
    lines = ["commands from plugins:"]
    for plugin, commands in sections.items():
        lines += [f"  {plugin}:", *commands]
    return "\n".join(lines) + "\n\n"

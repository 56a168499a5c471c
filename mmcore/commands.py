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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmcore.errors import MMCoreError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(MMCoreError):
    """Bad command-line input, such as an unknown kind (exit code 2)."""


@dataclass(frozen=True)
class Command:
    """One CLI verb a plugin registers."""

    name: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    summary: str = ""
    plugin: str = ""

    @property
    def description(self) -> str:
        """The help text: ``run``'s docstring, else the summary."""
        return (self.run.__doc__ or "").strip() or self.summary


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

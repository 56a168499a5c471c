"""The command line's error boundary: expected errors print one line per problem and an
exit code (2 for a bad spec or command line, 1 otherwise); anything unexpected prints one
line naming where it happened and how to see the traceback (``MMCORE_DEBUG=1``)."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mmcore.commands import EXIT_FAILURE, EXIT_USAGE, UsageError
from mmcore.errors import MMCoreError, SpecError

DEBUG_ENV = "MMCORE_DEBUG"


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
def concise_warnings() -> Iterator[None]:
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
        with concise_warnings():
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
    except Exception as exc:  # the boundary: anything unexpected is one line, not a trace
        if debug:
            raise
        where = _origin(exc)
        print(f"error: unexpected {type(exc).__name__}{where}: {_one_line(exc)} (this is a "
              f"bug; {DEBUG_ENV}=1 shows the traceback)", file=sys.stderr)
        return EXIT_FAILURE


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:500] or type(exc).__name__


def _origin(exc: BaseException) -> str:
    """`` in FILE:LINE`` of the innermost frame that raised ``exc``."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return ""
    return f" in {Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}"

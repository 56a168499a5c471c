"""Run ``mmcore`` as a separate process under a memory cap and a timeout.

Two ways, the same contract (exit code, stdout, stderr):

- ``fresh``: a real ``python -m mmcore ...`` subprocess. Faithful to the last byte, but
  every case pays for importing torch and loading the plugins (~7 s of CPU each).
- forked (the default): a ``multiprocessing`` fork server imports torch, the CLI and the
  first-party plugin modules once; each case is a child forked from it that runs
  ``mmcore.__main__`` exactly as ``python -m mmcore`` does (``runpy``: plugin discovery
  and registration, then the command; an uncaught exception prints its traceback and
  exits 1, as the interpreter does; ``PYTHONPATH`` is put on ``sys.path``). Only the
  imports are shared: a case about what gets imported at start-up runs ``fresh``.

``MMCORE_HOSTILE_FRESH=1`` runs every case fresh.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: address-space cap of each case; importing torch and the plugins takes ~0.7 GiB
MEMORY_CAP = 3 << 30
#: wall-clock limit of each case (a loaded 2-core machine is slow; a hang is not)
TIMEOUT_S = 60.0
FRESH_ENV = "MMCORE_HOSTILE_FRESH"
#: what torch imports on the first meta-device op (~5 s of CPU a case otherwise)
TORCH_LAZY = ["torch", "torch._dynamo", "torch._refs", "torch._decomp",
              "torch._meta_registrations"]


@dataclass(frozen=True)
class Result:
    """What one run of the command line did."""

    code: int
    out: str
    err: str


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def _child(argv: list[str], cwd: str, env: dict[str, str], out: str, err: str) -> None:
    """Body of a forked case: ``python -m mmcore *argv`` in ``cwd`` with ``env``."""
    import runpy
    import traceback

    for fd, name in ((1, out), (2, err)):
        handle = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(handle, fd)
        os.close(handle)
    _cap_memory()
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = ["mmcore", *argv]
    # as the interpreter does at start-up (plugins found through entry points need it)
    sys.path[:0] = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    code = 0
    try:
        runpy.run_module("mmcore", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # reported as the interpreter would
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


_CONTEXT: multiprocessing.context.ForkServerContext | None = None


def _context() -> multiprocessing.context.ForkServerContext:
    global _CONTEXT
    if _CONTEXT is None:
        context = multiprocessing.get_context("forkserver")
        from mmcore.plugins import read_manifest

        # names importable from site-packages: the fork server of Python 3.11 ignores the
        # test's sys.path (and a preload that fails to import, silently)
        context.set_forkserver_preload([*TORCH_LAZY, "mmcore.cli", *read_manifest()["plugins"]])
        _CONTEXT = context
    return _CONTEXT


def _forked(argv: list[str], cwd: Path, env: dict[str, str], logs: Path) -> Result:
    out, err = logs / "stdout", logs / "stderr"
    process = _context().Process(target=_child, args=(argv, str(cwd), env, str(out), str(err)))
    process.start()
    process.join(TIMEOUT_S)
    if process.exitcode is None:
        process.kill()
        process.join()
        raise TimeoutError(f"mmcore {' '.join(argv)} ran past {TIMEOUT_S:.0f} s")
    return Result(process.exitcode, _text(out), _text(err))


def _fresh(argv: list[str], cwd: Path, env: dict[str, str]) -> Result:
    done = subprocess.run([sys.executable, "-m", "mmcore", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, errors="replace",
                          timeout=TIMEOUT_S, preexec_fn=_cap_memory, check=False)
    return Result(done.returncode, done.stdout, done.stderr)


def _text(path: Path) -> str:
    return path.read_bytes().decode("utf-8", "replace") if path.exists() else ""


def run_mmcore(argv: Sequence[str], *, cwd: Path, logs: Path,
               env: Mapping[str, str] | None = None, fresh: bool = False) -> Result:
    """``mmcore *argv`` in ``cwd`` with the test's environment plus ``env``; ``logs`` is a
    folder outside the tree under test for the forked case's output files."""
    full = {**os.environ, **(env or {})}
    if fresh or os.environ.get(FRESH_ENV, "") not in ("", "0"):
        return _fresh(list(argv), cwd, full)
    return _forked(list(argv), cwd, full, logs)

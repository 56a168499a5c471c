"""``mmcore new-plugin NAME [--kind KIND]``: write a working third-party plugin package.

The package (``mmcore-NAME``, module ``mmcore_NAME``, plugin ``NAME``) holds a
``pyproject.toml`` with the ``mmcore.plugins`` entry point, one component of the chosen
kind with its config and cost function (or a converter / a command), a test that runs the
conformance suite on it, and a README. Its tests pass right after generation, installed or
not (``pytest`` from the package folder). Templates: :mod:`mmcore.scaffold_templates`.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmcore.commands import EXIT_OK, UsageError
from mmcore.scaffold_templates import COMMON, KINDS

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def names(name: str) -> dict[str, str]:
    """The names a plugin called ``name`` uses in its files."""
    plugin = name.removeprefix("mmcore_").removeprefix("mmcore-").replace("-", "_")
    if not _NAME.match(plugin):
        raise UsageError(f"plugin name {name!r}: use lower-case letters, digits and '_' or '-',"
                         " starting with a letter (e.g. acme)")
    return {"plugin": plugin, "module": f"mmcore_{plugin}",
            "dist": f"mmcore-{plugin.replace('_', '-')}",
            "component": plugin.replace("_", "-"),
            "cls": "".join(part.title() for part in plugin.split("_"))}


def generate(name: str, out: str | Path, kind: str = "encoder") -> Path:
    """Write the package for plugin ``name`` into ``out`` (must not exist); returns it."""
    if kind not in KINDS:
        raise UsageError(f"--kind {kind!r}: choose one of {', '.join(KINDS)}")
    values = names(name)
    root = Path(out)
    if root.exists():
        raise UsageError(f"{root} already exists; choose another --out")
    files = {**COMMON, **KINDS[kind]}
    for relative, template in files.items():
        path = root / relative.format(**values)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_fill(template, values, kind), encoding="utf-8")
    return root


def _fill(template: str, values: dict[str, str], kind: str) -> str:
    """``<<key>>`` placeholders (templates are Python and TOML, full of braces)."""
    text = template.replace("<<kind>>", kind)
    for key, value in values.items():
        text = text.replace(f"<<{key}>>", value)
    return text


def cmd_new_plugin(args: argparse.Namespace) -> int:
    """Write a new plugin package: pyproject.toml with the mmcore.plugins entry point, one
    component (config, cost function), a conformance test and a README. Then: cd into it,
    run pytest, and pip install -e . to have mmcore load it."""
    out = Path(args.out) if args.out else Path(names(args.name)["dist"])
    root = generate(args.name, out, args.kind)
    print(f"wrote {root}/ ({args.kind} plugin {names(args.name)['plugin']!r}); next: "
          f"cd {root} && python -m pytest -q && pip install -e .")
    return EXIT_OK


def add_command(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``mmcore new-plugin`` with the CLI's ``_command`` helper."""
    p = command(sub, "new-plugin", cmd_new_plugin, "write a new plugin package that passes "
                "its own tests", "example: mmcore new-plugin acme --kind fusion")
    p.add_argument("name", metavar="NAME", help="the plugin's name, e.g. acme (package "
                   "mmcore-acme, module mmcore_acme)")
    p.add_argument("--kind", default="encoder", choices=list(KINDS),
                   help="what its one component is (default encoder)")
    p.add_argument("--out", metavar="DIR", help="where to write (default ./mmcore-NAME)")

"""Reading a spec's YAML strictly and within limits: a safe loader that reads ``1e-3`` as a
number, duplicate keys and every YAML problem reported with its line, and limits on size,
alias expansion and depth (docs/reliability.md)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from mmcore.errors import SpecError, SpecIssue
from mmcore.limits import Limit

__all__ = ["SPEC_BYTES", "SPEC_DEPTH", "SPEC_NODES", "parse_yaml", "read_spec_text"]

# YAML 1.1 reads "1e-3" as a string; people mean a float.
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class _SpecLoader(yaml.SafeLoader):
    """Safe loader that reads ``1e-3`` as a float."""


_SpecLoader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:float"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SpecLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


#: Limits on a spec's YAML (docs/reliability.md): its size, the nodes it expands to once
#: aliases are followed (a "billion laughs" document expands exponentially) and its depth.
SPEC_BYTES = Limit("spec_bytes", 1 << 20, "the size of a spec file in bytes")
SPEC_NODES = Limit("spec_nodes", 100_000, "values in a spec once YAML aliases are followed")
SPEC_DEPTH = Limit("spec_depth", 64, "how deeply a spec may nest")


class _Budget:
    """Counts the nodes a walk visits; too many, too deep or a cycle is a SpecError."""

    def __init__(self, source: str) -> None:
        self.source, self.nodes = source, 0
        self.open: set[int] = set()  # ids of the nodes on the current path

    def enter(self, node: yaml.Node, path: str, depth: int) -> None:
        self.nodes += 1
        problem = ""
        if id(node) in self.open:
            problem = "a YAML alias refers to a node that contains it (a recursive alias)"
        elif depth > SPEC_DEPTH.value():
            problem = f"the spec nests deeper than {SPEC_DEPTH.value()} levels {SPEC_DEPTH.hint()}"
        elif self.nodes > SPEC_NODES.value():
            problem = (f"the spec expands to more than {SPEC_NODES.value():,} values once YAML "
                       f"aliases are followed {SPEC_NODES.hint()}")
        if problem:
            line = node.start_mark.line + 1
            raise SpecError([SpecIssue(path, problem, line)], self.source)
        self.open.add(id(node))


def _walk(node: yaml.Node, path: str, lines: dict[str, int], issues: list[SpecIssue],
          budget: _Budget, depth: int = 0) -> None:
    """Record each key's line and report duplicate keys, within the budget's limits."""
    budget.enter(node, path, depth)
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            sub = f"{path}.{key}" if path else key
            line = key_node.start_mark.line + 1
            if key in seen:
                issues.append(SpecIssue(sub, f"duplicate key (first on line {seen[key]})", line))
            seen[key] = line
            lines.setdefault(sub, line)
            _walk(value_node, sub, lines, issues, budget, depth + 1)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            sub = f"{path}.{i}" if path else str(i)
            lines.setdefault(sub, item.start_mark.line + 1)
            _walk(item, sub, lines, issues, budget, depth + 1)
    budget.open.discard(id(node))


def parse_yaml(text: str, source: str = "<string>") -> tuple[Any, dict[str, int]]:
    """YAML text -> (data, key path -> line). Raises SpecError on bad YAML, duplicate keys,
    or a spec over the size, alias-expansion or nesting limits."""
    if len(text) > SPEC_BYTES.value():
        raise SpecError([SpecIssue("", f"the spec is {len(text):,} characters, over the "
                                   f"limit of {SPEC_BYTES.value():,} {SPEC_BYTES.hint()}")],
                        source)
    loader: _SpecLoader | None = None
    try:
        loader = _SpecLoader(text)  # the reader rejects control characters here
        node = loader.get_single_node()
        if node is None:
            raise SpecError([SpecIssue("", "the spec is empty")], source)
        lines: dict[str, int] = {}
        issues: list[SpecIssue] = []
        _walk(node, "", lines, issues, _Budget(source))
        if issues:
            raise SpecError(issues, source)
        return loader.construct_document(node), lines
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise SpecError([SpecIssue("", f"not valid YAML: {exc}", line)], source) from None
    except RecursionError:
        raise SpecError([SpecIssue("", f"the spec nests too deeply to read (limit "
                                   f"{SPEC_DEPTH.value()} levels)")], source) from None
    finally:
        if loader is not None:
            loader.dispose()


def read_spec_text(path: Path) -> str:
    """A spec file's text: UTF-8 and at most SPEC_BYTES, checked before it is read."""
    size = path.stat().st_size
    if size > SPEC_BYTES.value():
        raise SpecError([SpecIssue("", f"the spec file is {size:,} bytes, over the limit of "
                                   f"{SPEC_BYTES.value():,} {SPEC_BYTES.hint()}")],
                        str(path))
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError([SpecIssue("", f"not UTF-8 text (byte {exc.start}: "
                                   f"{exc.object[exc.start:exc.start + 1]!r}); save the "
                                   "spec as UTF-8")], str(path)) from None

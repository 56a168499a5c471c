"""Dotted overrides of a spec from the command line: ``train.lr=1e-4 fusion.layers=4``.

An override is ``KEY=VALUE``: KEY a dotted key path (a list item by its index), VALUE a
YAML scalar or flow collection (``[a, b]``, ``{type: vit}``) read by the spec's own strict
loader. Overrides are applied to the spec's raw data *before* validation, so an override is
checked exactly like the YAML, and each problem it causes names its key; a key the spec
does not know gets the nearest known keys suggested.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mmcore.errors import RegistryError, SpecError, SpecIssue, suggest
from mmcore.registry import Registry
from mmcore.spec import ModelSpec, SpecCheck, check_spec, parse_yaml, resolve_source

#: ``KEY=`` at the start of an override: dotted names (list indices are names of digits)
_KEY = re.compile(r"[A-Za-z_][\w-]*(?:\.[\w-]+)*=")


@dataclass(frozen=True)
class Override:
    """One parsed ``KEY=VALUE``: the dotted key, the YAML value and the text as given."""

    key: str
    value: Any
    text: str
    #: the first mapping applying it created (the key did not exist down to there)
    created: str | None = None

    @property
    def parts(self) -> list[str]:
        return self.key.split(".")


def is_override(text: str) -> bool:
    """Whether ``text`` reads as ``KEY=VALUE`` (not a file or preset name)."""
    return _KEY.match(text) is not None


def parse_override(text: str) -> Override:
    """``"train.lr=1e-4"`` -> Override("train.lr", 0.0001). SpecError naming the key when
    the text is not KEY=VALUE or the value is not valid YAML."""
    if not is_override(text):
        raise SpecError([SpecIssue("", f"override {text!r} is not KEY=VALUE with a dotted "
                                       "KEY, e.g. train.lr=1e-4")])
    key, _, raw = text.partition("=")
    if not raw.strip():
        raise SpecError([SpecIssue(key, f"override {text!r} has no value "
                                        f"(write {key}=null for none)")])
    try:
        value, _ = parse_yaml(raw, f"override {key}")
    except SpecError:
        raise SpecError([SpecIssue(key, f"value {raw!r} is not valid YAML (in override "
                                        f"{text!r}); quote strings with YAML syntax")]) from None
    return Override(key, value, text)


def parse_overrides(texts: Sequence[str]) -> list[Override]:
    """Parse each ``KEY=VALUE``; SpecError lists every malformed one at once."""
    parsed, issues = [], []
    for text in texts:
        try:
            parsed.append(parse_override(text))
        except SpecError as exc:
            issues += exc.issues
    if issues:
        raise SpecError(issues, "command line")
    return parsed


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[Override]
                    ) -> tuple[dict[str, Any], list[Override], list[SpecIssue]]:
    """A deep copy of raw spec ``data`` with each override set, in order (missing mappings
    on the way are created); the overrides as applied (``created`` filled in); and those
    that could not be set (say, a key below a number)."""
    out = copy.deepcopy(dict(data))
    applied, issues = [], []
    for override in overrides:
        created: list[str] = []
        problem = _set(out, override.parts, override.value, created)
        if problem is not None:
            issues.append(SpecIssue(override.key, f"{problem} (in override {override.text!r})"))
        applied.append(replace(override, created=created[0] if created else None))
    return out, applied, issues


def _set(node: Any, parts: list[str], value: Any, created: list[str]) -> str | None:
    """Set ``node[p0][p1]...[pn] = value``; a message when it cannot be done. The paths of
    mappings it had to create go to ``created``."""
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth + 1])
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                return f"{where}: a list of {len(node)} item(s) has no index {part!r}"
            if last:
                node[int(part)] = value
                return None
            node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                if part not in node:
                    created.append(where)
                node[part] = value
                return None
            if node.get(part) is None:
                node[part] = {}
                created.append(where)
            node = node[part]
        else:
            parent = ".".join(parts[:depth]) or "the spec"
            return f"cannot set {where}: {parent} is {type(node).__name__}, not a mapping"
    return None


# --- reading a spec with overrides ---------------------------------------------------------


def read_spec(source: str | Path | Mapping[str, Any], overrides: Sequence[str] = (),
              registry: Registry | None = None) -> SpecCheck:
    """Like :func:`mmcore.spec.read_spec`, with ``KEY=VALUE`` overrides applied to the raw
    data before it is checked; every problem is collected, those of an override name it."""
    registry = _registry(registry)
    data: Any
    lines: dict[str, int] = {}
    name: str | None = None
    try:
        parsed = parse_overrides(overrides)
        if isinstance(source, Mapping):
            data = dict(source)
        else:
            text, name = resolve_source(source, registry)
            data, lines = parse_yaml(text, name)
    except SpecError as exc:
        return SpecCheck(None, exc.issues, exc.source)
    if not parsed or not isinstance(data, Mapping):
        return check_spec(data, lines, name, registry)
    changed, applied, issues = apply_overrides(data, parsed)
    found = check_spec(changed, lines, name, registry)
    found.issues = issues + _named(found.issues, applied, lambda: _known(data, registry))
    found.unlocated = frozenset(p for o in applied for p in (o.key, o.created) if p)
    return found


def load_spec(source: str | Path | Mapping[str, Any], overrides: Sequence[str] = (),
              registry: Registry | None = None) -> ModelSpec:
    """A validated spec with overrides applied; SpecError lists every problem."""
    return read_spec(source, overrides, registry).raise_issues()


def _registry(registry: Registry | None) -> Registry:
    if registry is not None:
        return registry
    from mmcore.plugins import get_registry

    return get_registry()


def _named(issues: list[SpecIssue], overrides: Sequence[Override],
           known: Any) -> list[SpecIssue]:
    """Each issue an override caused says so; an unknown key suggests the nearest known."""
    out = []
    candidates: list[str] | None = None
    for issue in issues:
        cause = next((o for o in reversed(overrides) if _related(issue.path, o)), None)
        if cause is None:
            out.append(issue)
            continue
        message = f"{issue.message} (from override {cause.text!r})"
        candidates = known() if candidates is None else candidates
        if cause.key not in candidates:
            message += suggest(cause.key, candidates) or \
                f" {cause.key!r} is not a key of this spec"
        out.append(SpecIssue(issue.path, message))  # no YAML line: it came from here
    return out


def _related(path: str, override: Override) -> bool:
    """Whether an issue at ``path`` is the override's doing: at, above or below its key,
    or within a mapping it created."""
    key, created = override.key, override.created
    return path == key or path.startswith(key + ".") or key.startswith(path + ".") or (
        created is not None and (path == created or path.startswith(created + ".")))


def _known(data: Mapping[str, Any], registry: Registry) -> list[str]:
    """Every key path the un-overridden spec has or could have: its own keys, every
    field of the spec's models (defaults included) and of each component's config."""
    keys = set(_paths(data))
    spec = check_spec(data, registry=registry).spec
    if spec is None:
        return sorted(keys)
    keys.update(_paths(spec.to_dict()))
    for path, kind, ref in spec.components():
        try:
            fields = registry.get(kind, ref.type).config.model_fields
        except RegistryError:
            continue
        keys.update(f"{path}.{name}" for name in fields)
    return sorted(keys)


def _paths(node: Any, prefix: str = "") -> Iterator[str]:
    """Every dotted key path of nested mappings (lists are leaves)."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            path = f"{prefix}{key}"
            yield path
            yield from _paths(value, f"{path}.")

"""``mmcore describe``: what a registered name takes, read from its plugin's pydantic config.

Per parameter: type, default, constraint (``Field(gt=0)``, ``Literal`` choices, lengths) and
comment (``Field(description=...)``, else the ``#:`` comment above the attribute).
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Sequence
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from mmcore.errors import RegistryError, suggest
from mmcore.registry import Entry, Registry

_ATTRIBUTE = re.compile(r"^\s+(\w+)\s*:")
_COMMENT = re.compile(r"^\s+#:\s?(.*)$")
_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="), ("multiple_of", "multiple of"),
           ("min_length", "length >="), ("max_length", "length <="))


def find_entry(registry: Registry, words: Sequence[str]) -> Entry:
    """``[NAME]`` or ``[KIND, NAME]`` -> the entry. An unknown name suggests the nearest
    registered ones; a name several kinds use asks for the kind."""
    if len(words) == 2:
        kind = words[0] if words[0] in registry.kinds() else words[0].removesuffix("s")
        return registry.get(kind, words[1])
    if len(words) != 1:
        raise RegistryError("describe takes NAME or KIND NAME, e.g. 'fusion cross-attention'")
    name = words[0]
    found = registry.find(name)
    if len(found) == 1:
        return found[0]
    if found:
        kinds = ", ".join(f"'{e.kind} {name}'" for e in found)
        raise RegistryError(f"{name!r} names several kinds; say which: {kinds}")
    every = {e.name for e in registry.list()}
    raise RegistryError(f"nothing is registered as {name!r}.{suggest(name, every)}")


def describe(entry: Entry) -> dict[str, Any]:
    """The entry's metadata plus ``parameters``: one dict per config field."""
    comments = attribute_comments(entry.config)
    fields = entry.config.model_fields
    return {**entry.describe(),
            "config": entry.config.__name__,
            "parameters": [parameter(name, field, comments.get(name, ""))
                           for name, field in fields.items()]}


def parameter(name: str, field: FieldInfo, comment: str = "") -> dict[str, Any]:
    """``{name, type, required, default, constraint, comment}`` of one pydantic field."""
    return {"name": name, "type": type_name(field.annotation), "required": field.is_required(),
            "default": _default(field), "constraint": constraint(field),
            "comment": field.description or comment}


def _default(field: FieldInfo) -> Any:
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]
    if field.default is PydanticUndefined:
        return None
    value = field.default
    return value.model_dump() if isinstance(value, BaseModel) else value


def type_name(annotation: Any) -> str:
    """A readable type: ``int | None``, ``dict[str, list[str]]``, ``Literal['a', 'b']``."""
    if annotation is None or annotation is type(None):
        return "None"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "Literal[" + ", ".join(repr(a) for a in args) + "]"
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is not None:
        base = getattr(origin, "__name__", str(origin))
        return f"{base}[{', '.join(type_name(a) for a in args)}]" if args else base
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def constraint(field: FieldInfo) -> str:
    """``> 0``, ``>= 1, <= 8``, ``one of 'cls', 'mean'``; empty when there is none."""
    parts = []
    for item in field.metadata:
        for attr, symbol in _BOUNDS:
            value = getattr(item, attr, None)
            if value is not None and isinstance(item, annotated_types.BaseMetadata):
                parts.append(f"{symbol} {value}")
    choices = _literal_choices(field.annotation)
    if choices:
        parts.append("one of " + ", ".join(repr(c) for c in choices))
    return ", ".join(parts)


def _literal_choices(annotation: Any) -> list[Any]:
    """The values of a ``Literal`` (also inside ``X | None`` or a container's items)."""
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    out: list[Any] = []
    for arg in typing.get_args(annotation):
        out += [c for c in _literal_choices(arg) if c not in out]
    return out


def attribute_comments(config: type) -> dict[str, str]:
    """``#:`` comments above each attribute of ``config`` and its bases (nearest wins)."""
    comments: dict[str, str] = {}
    for cls in reversed(config.__mro__):
        if cls is object or not issubclass(cls, BaseModel) or cls is BaseModel:
            continue
        try:
            source = inspect.getsource(cls)
        except (OSError, TypeError):
            continue
        comments.update(_comments_in(source))
    return comments


def _comments_in(source: str) -> dict[str, str]:
    comments: dict[str, str] = {}
    pending: list[str] = []
    for line in source.splitlines():
        comment = _COMMENT.match(line)
        if comment:
            pending.append(comment.group(1).strip())
            continue
        attribute = _ATTRIBUTE.match(line)
        if attribute and pending:
            comments[attribute.group(1)] = " ".join(pending)
        pending = []
    return comments


def format_description(info: dict[str, Any]) -> str:
    """The human-readable ``mmcore describe`` text."""
    from mmcore.report import format_table

    lines = [f"{info['kind']} {info['name']}: {info['summary'] or '(no summary)'}",
             f"plugin: {info['plugin']} {info['version']}", f"defined at: {info['location']}"]
    params = info["parameters"]
    if not params:
        return "\n".join([*lines, "parameters: none"])
    rows = [[p["name"], p["type"], "(required)" if p["required"] else repr(p["default"]),
             p["constraint"], p["comment"]] for p in params]
    table = format_table(["parameter", "type", "default", "constraint", "comment"], rows)
    return "\n".join([*lines, f"parameters ({info['config']}):", "", table])

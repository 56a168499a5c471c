"""A typed registry of component factories, filled by plugins. It holds no runtime state."""

from __future__ import annotations

import argparse
import builtins
import fnmatch
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from mmcore.errors import RegistryError, suggest
from mmcore.hookspecs import HOOK_KINDS

#: The kinds of thing a plugin can register: one per hook, in the hookspecs' order.
KINDS: tuple[str, ...] = tuple(HOOK_KINDS.values())


class ComponentConfig(BaseModel):
    """Base of every component's params: strict, so a misspelt key is an error, and an
    integer parameter takes only integers (``layers: true`` or ``heads: 4.5`` would
    otherwise be coerced to 1 and rejected late, or ``heads: 4.0`` silently truncated)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_coercion_to_int(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and _wants_int(field.annotation) and (
                isinstance(value, (bool, float))):
            raise ValueError(f"expected an integer, got {value!r}")
        return value


def _wants_int(annotation: Any) -> bool:
    """Whether a field's annotation is ``int`` (possibly ``int | None``), not ``bool`` or
    a float union that also accepts floats."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = [a for a in args if a is not type(None)]
        return kinds == [int]
    return annotation is int


class NoConfig(ComponentConfig):
    """Params of a component that takes none."""


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
        return inspect.cleandoc(self.run.__doc__ or "") or self.summary


@dataclass(frozen=True)
class Entry:
    """One registered name: its factory, params model and who registered it."""

    kind: str
    name: str
    factory: Callable[..., Any]
    config: type[BaseModel]
    plugin: str
    version: str
    location: str
    summary: str = ""
    #: A tiny params dict for tests and the conformance suite.
    tiny: dict[str, Any] | None = None
    #: ``example(module, batch_size, generator) -> input`` for the conformance suite.
    example: Callable[..., Any] | None = None
    #: ``cost(params, ctx: mmcore.cost.CostContext) -> mmcore.cost.Cost``, analytic
    cost: Callable[..., Any] | None = None
    #: a preset's known pretrained sources: hub name (``hf://ORG/NAME``) -> converter
    pretrained: dict[str, str] | None = None

    def describe(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "name": self.name,
            "plugin": self.plugin,
            "version": self.version,
            "location": self.location,
            "summary": self.summary,
        }


def source_location(obj: Any) -> str:
    """``file:line`` where ``obj`` is defined, or ``<unknown>``."""
    try:
        target = inspect.unwrap(obj)
        file = inspect.getsourcefile(target) or "<unknown>"
        line = inspect.getsourcelines(target)[1]
    except (TypeError, OSError):
        return "<unknown>"
    return f"{file}:{line}"


class Registry:
    """Entries by kind and name. ``list``, ``get`` (with near-miss hints) and ``find``."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        #: plugin -> why it was not loaded (e.g. blocked by an environment variable)
        self.blocked: dict[str, str] = {}
        #: (kind, name) -> the package a plugin's entry needs but which is not installed
        self.unavailable: dict[tuple[str, str], str] = {}

    def add(self, entry: Entry) -> None:
        if entry.kind not in self._entries:
            raise RegistryError(
                f"plugin {entry.plugin!r} registers unknown kind {entry.kind!r};"
                f" kinds are {', '.join(KINDS)}"
            )
        existing = self._entries[entry.kind].get(entry.name)
        if existing is not None:
            raise RegistryError(
                f"{entry.kind} {entry.name!r} is registered twice: by plugin "
                f"{existing.plugin!r} ({existing.location}) and by plugin "
                f"{entry.plugin!r} ({entry.location})"
            )
        self._entries[entry.kind][entry.name] = entry

    def kinds(self) -> tuple[str, ...]:
        return KINDS

    def list(self, kind: str | None = None, pattern: str = "*") -> builtins.list[Entry]:
        """Entries of ``kind`` (all kinds when None) whose name matches the glob ``pattern``."""
        kinds = [kind] if kind else list(KINDS)
        out: builtins.list[Entry] = []
        for k in kinds:
            self._check_kind(k)
            out += [e for n, e in sorted(self._entries[k].items()) if fnmatch.fnmatch(n, pattern)]
        return out

    def get(self, kind: str, name: str) -> Entry:
        """The entry ``name`` of ``kind``; an unknown name suggests the nearest ones."""
        self._check_kind(kind)
        try:
            return self._entries[kind][name]
        except KeyError:
            package = self.unavailable.get((kind, name))
            if package is not None:
                raise RegistryError(f"{kind} {name!r} needs the {package!r} package, which is "
                                    f"not installed (pip install {package})") from None
            hint = suggest(name, self._entries[kind])
            raise RegistryError(f"unknown {kind} {name!r}.{hint}{self._blocked_hint()}") from None

    def _blocked_hint(self) -> str:
        """Which unloaded plugins might provide a missing name (they are never imported)."""
        if not self.blocked:
            return ""
        by_reason: dict[str, builtins.list[str]] = {}
        for plugin, reason in self.blocked.items():
            by_reason.setdefault(reason, []).append(repr(plugin))
        parts = "; ".join(f"{', '.join(p)} ({why})" for why, p in by_reason.items())
        return f" It may belong to a plugin that was not loaded: {parts}."

    def find(self, name: str) -> builtins.list[Entry]:
        """Every entry called ``name``, whatever its kind (owning plugin, version, file:line)."""
        return [e for kind in KINDS if (e := self._entries[kind].get(name)) is not None]

    def names(self, kind: str) -> builtins.list[str]:
        self._check_kind(kind)
        return sorted(self._entries[kind])

    def _check_kind(self, kind: str) -> None:
        if kind not in self._entries:
            raise RegistryError(f"unknown kind {kind!r}.{suggest(kind, KINDS)}")

"""Plugin discovery and loading: first-party plugins from ``registry.yaml`` and
third-party ones from the ``mmcore.plugins`` entry-point group, through one path."""

from __future__ import annotations

import fnmatch
import importlib
import importlib.metadata as metadata
import importlib.util
import os
import signal
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy
import yaml

from mmcore import hookspecs
from mmcore._version import __version__
from mmcore.errors import RegistryError
from mmcore.registry import Command, Entry, NoConfig, Registry, source_location

ENTRY_POINT_GROUP = "mmcore.plugins"
ALLOW_ENV = "MMCORE_PLUGINS_ALLOW"
BLOCK_ENV = "MMCORE_PLUGINS_BLOCK"


class PluginWarning(UserWarning):
    """A plugin could not be loaded; everything else still works."""


@dataclass
class PluginInfo:
    """What ``mmcore plugins`` shows about one plugin."""

    name: str
    version: str
    source: str  # "builtin" or "entry-point"
    status: str = "loaded"  # loaded | failed | blocked
    error: str = ""
    registered: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "source": self.source,
            "status": self.status,
            "error": self.error,
            "registers": [{"kind": k, "name": n} for k, n in self.registered],
        }


@dataclass(frozen=True)
class _Candidate:
    name: str
    load: Callable[[], ModuleType]
    version: str
    source: str


def manifest_path() -> Path:
    """``registry.yaml``: inside the installed package (the wheel copies it there), else at
    the source-tree root, its one source of truth."""
    here = Path(__file__).resolve().parent
    for path in (here / "registry.yaml", here.parent / "registry.yaml"):
        if path.is_file():
            return path
    raise FileNotFoundError("registry.yaml not found beside the mmcore package")


def read_manifest() -> dict[str, Any]:
    """The manifest: ``{"plugins": [first-party plugin module names]}``."""
    path = manifest_path()
    with path.open(encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict) or set(data) - {"plugins"}:
        raise RegistryError(f"{path}: the manifest holds one key, 'plugins'; presets are "
                            "registered by their plugins through register_presets")
    return {"plugins": list(data.get("plugins") or [])}


def _builtin_candidates(names: list[str]) -> Iterator[_Candidate]:
    for name in names:
        load = lambda n=name: importlib.import_module(n)  # noqa: E731
        yield _Candidate(name, load, __version__, "builtin")


def _entry_point_candidates() -> Iterator[_Candidate]:
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        version = ep.dist.version if ep.dist is not None else "unknown"
        yield _Candidate(ep.name, ep.load, version, "entry-point")


def _env_patterns(var: str) -> list[str]:
    return [p.strip() for p in os.environ.get(var, "").split(",") if p.strip()]


def is_allowed(name: str) -> bool:
    """Whether the allow/block environment variables let plugin ``name`` load."""
    return block_reason(name) is None


def block_reason(name: str) -> str | None:
    """Why the allow/block environment variables keep plugin ``name`` out, or None."""
    allow, block = _env_patterns(ALLOW_ENV), _env_patterns(BLOCK_ENV)
    if any(fnmatch.fnmatch(name, p) for p in block):
        return f"{BLOCK_ENV} blocks it"
    if allow and not any(fnmatch.fnmatch(name, p) for p in allow):
        return f"{ALLOW_ENV} does not list it"
    return None


class _Collector:
    """The ``register`` callbacks handed to one plugin; entries are kept until all succeed.

    A name the plugin registers twice in one kind raises, so the plugin fails as a whole."""

    def __init__(self, plugin: str, version: str) -> None:
        self.plugin, self.version = plugin, version
        self.entries: list[Entry] = []
        #: (kind, name) -> the missing package of an entry registered with ``requires``
        self.unavailable: dict[tuple[str, str], str] = {}
        self._seen: dict[tuple[str, str], Entry] = {}

    def for_kind(self, kind: str) -> Callable[..., None]:
        if kind == "preset":
            return self._register_preset
        if kind == "command":
            return self._register_command

        def register(name: str, factory: Callable[..., Any], *, config: type = NoConfig,
                     summary: str = "", tiny: dict[str, Any] | None = None,
                     example: Callable[..., Any] | None = None,
                     cost: Callable[..., Any] | None = None,
                     requires: str | None = None) -> None:
            if requires is not None and importlib.util.find_spec(requires) is None:
                self.unavailable[(kind, name)] = requires  # absent, but named when asked for
                return
            _check_registration(kind, name, factory, config)
            doc = summary or (factory.__doc__ or "").strip().split("\n")[0]
            self._add(Entry(kind, name, factory, config, self.plugin, self.version,
                            source_location(factory), doc, tiny, example, cost))

        return register

    def _add(self, entry: Entry) -> None:
        earlier = self._seen.get((entry.kind, entry.name))
        if earlier is not None:
            raise RegistryError(f"it registers {entry.kind} {entry.name!r} twice "
                                f"({earlier.location} and {entry.location})")
        self._seen[(entry.kind, entry.name)] = entry
        self.entries.append(entry)

    def _register_preset(self, name: str, spec: str | Path | dict[str, Any], *,
                         summary: str = "", pretrained: dict[str, str] | None = None) -> None:
        """``pretrained``: known weights of this architecture, hub name -> converter."""
        location = str(spec) if not isinstance(spec, dict) else f"<{self.plugin}>"
        self._add(Entry("preset", name, lambda: spec, NoConfig, self.plugin,
                        self.version, location, summary, pretrained=pretrained))

    def _register_command(self, name: str, add_arguments: Callable[..., None],
                          run: Callable[..., int], *, summary: str = "") -> None:
        command = Command(name, add_arguments, run, summary, self.plugin)
        self._add(Entry("command", name, lambda: command, NoConfig, self.plugin,
                        self.version, source_location(run), command.summary))


def _check_registration(kind: str, name: Any, factory: Any, config: Any) -> None:
    """What a plugin hands ``register`` must be usable: a name, a callable factory and a
    pydantic config class (``config=dict`` would fail at every use)."""
    from pydantic import BaseModel

    if not isinstance(name, str) or not name:
        raise RegistryError(f"a {kind} name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise RegistryError(f"{kind} {name!r}: the factory must be callable, got "
                            f"{type(factory).__name__}")
    if not (isinstance(config, type) and issubclass(config, BaseModel)):
        raise RegistryError(f"{kind} {name!r}: config must be a pydantic model class "
                            f"(mmcore.registry.ComponentConfig), got {config!r}")


def _plugin_manager(cand: _Candidate) -> pluggy.PluginManager:
    """A plugin manager holding just this plugin (imported here)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(cand.load(), name=cand.name)
    pm.check_pending()
    return pm


@contextmanager
def _real_interrupts() -> Iterator[list[bool]]:
    """Tell a real Ctrl-C (SIGINT) apart from a plugin raising KeyboardInterrupt itself:
    the yielded list becomes truthy when the signal arrives while plugins load."""
    interrupted: list[bool] = []
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return

    def on_sigint(signum: int, frame: Any) -> None:
        interrupted.append(True)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def _fail(info: PluginInfo, exc: BaseException) -> PluginInfo:
    info.status, info.error = "failed", f"{type(exc).__name__}: {exc}"
    warnings.warn(f"mmcore plugin {info.name!r} could not be loaded: {info.error}",
                  PluginWarning, stacklevel=4)
    return info


def _collect_commands(pm: pluggy.PluginManager, collector: _Collector, info: PluginInfo) -> None:
    """Call ``register_commands`` on its own: a plugin whose commands fail keeps its
    components, and the warning names it."""
    kept = len(collector.entries)
    try:
        pm.hook.register_commands(register=collector.for_kind("command"))
    except Exception as exc:  # its commands are left out, nothing else
        del collector.entries[kept:]
        info.error = f"commands not registered: {type(exc).__name__}: {exc}"
        warnings.warn(f"mmcore plugin {info.name!r} could not register its commands: "
                      f"{type(exc).__name__}: {exc}", PluginWarning, stacklevel=4)


def _add_entries(registry: Registry, entries: list[Entry], info: PluginInfo) -> None:
    """Add a plugin's entries. A command name another plugin took is skipped with a
    warning; any other name claimed twice raises, naming both plugins."""
    for entry in entries:
        if entry.kind == "command" and entry.name in registry.names("command"):
            owner = registry.get("command", entry.name).plugin
            warnings.warn(f"mmcore plugin {info.name!r}: command {entry.name!r} is already "
                          f"registered by plugin {owner!r}; {info.name}'s is ignored",
                          PluginWarning, stacklevel=4)
            continue
        registry.add(entry)
        info.registered.append((entry.kind, entry.name))


def _load_one(cand: _Candidate, registry: Registry) -> PluginInfo:
    info = PluginInfo(cand.name, cand.version, cand.source)
    reason = block_reason(cand.name)
    if reason is not None:
        info.status = "blocked"
        registry.blocked[cand.name] = reason
        return info
    collector = _Collector(cand.name, cand.version)
    try:
        with _real_interrupts() as interrupted:
            pm = _plugin_manager(cand)
            for hook_name, kind in hookspecs.HOOK_KINDS.items():
                if kind != "command":
                    getattr(pm.hook, hook_name)(register=collector.for_kind(kind))
    except BaseException as exc:  # a broken plugin must not break the rest, not even
        if interrupted:  # with SystemExit or a KeyboardInterrupt of its own; Ctrl-C stops
            raise
        return _fail(info, exc)
    _collect_commands(pm, collector, info)
    _add_entries(registry, collector.entries, info)
    registry.unavailable.update(collector.unavailable)
    return info


def load_plugins() -> tuple[Registry, list[PluginInfo]]:
    """Load every allowed plugin into a fresh registry. A name two plugins register raises
    RegistryError naming both (commands excepted: the later one is skipped with a warning)."""
    registry = Registry()
    infos: list[PluginInfo] = []
    candidates = [*_builtin_candidates(read_manifest()["plugins"]), *_entry_point_candidates()]
    seen: set[str] = set()
    for cand in candidates:
        if cand.name in seen:
            raise RegistryError(f"two plugins are both called {cand.name!r}")
        seen.add(cand.name)
        infos.append(_load_one(cand, registry))
    return registry, infos


@lru_cache(maxsize=1)
def _cached() -> tuple[Registry, list[PluginInfo]]:
    return load_plugins()


def get_registry() -> Registry:
    """The process-wide registry (loaded once; :func:`reload` to re-discover)."""
    return _cached()[0]


def plugin_infos() -> list[PluginInfo]:
    return _cached()[1]


def reload() -> Registry:
    """Forget the loaded plugins (e.g. after changing the allow/block variables)."""
    _cached.cache_clear()
    return get_registry()

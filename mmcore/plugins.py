"""Plugin discovery and loading: first-party plugins from ``registry.yaml`` and
third-party ones from the ``mmcore.plugins`` entry-point group, through one path."""

from __future__ import annotations

import fnmatch
import importlib
import importlib.metadata as metadata
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy
import yaml

from mmcore import hookspecs
from mmcore.errors import RegistryError
from mmcore.registry import Entry, NoConfig, Registry, source_location

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
    """``registry.yaml``: inside the installed package, else at the source-tree root."""
    here = Path(__file__).resolve().parent
    for path in (here / "registry.yaml", here.parent / "registry.yaml"):
        if path.is_file():
            return path
    raise FileNotFoundError("registry.yaml not found beside the mmcore package")


def read_manifest() -> dict[str, Any]:
    with manifest_path().open(encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    return {"plugins": list(data.get("plugins", [])), "presets": dict(data.get("presets", {}))}


def _mmcore_version() -> str:
    from mmcore import __version__

    return __version__


def _builtin_candidates(names: list[str]) -> Iterator[_Candidate]:
    for name in names:
        load = lambda n=name: importlib.import_module(n)  # noqa: E731
        yield _Candidate(name, load, _mmcore_version(), "builtin")


def _entry_point_candidates() -> Iterator[_Candidate]:
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        version = ep.dist.version if ep.dist is not None else "unknown"
        yield _Candidate(ep.name, ep.load, version, "entry-point")


def _env_patterns(var: str) -> list[str]:
    return [p.strip() for p in os.environ.get(var, "").split(",") if p.strip()]


def is_allowed(name: str) -> bool:
    """Whether the allow/block environment variables let plugin ``name`` load."""
    allow, block = _env_patterns(ALLOW_ENV), _env_patterns(BLOCK_ENV)
    if any(fnmatch.fnmatch(name, p) for p in block):
        return False
    return not allow or any(fnmatch.fnmatch(name, p) for p in allow)


class _Collector:
    """The ``register`` callbacks handed to one plugin; entries are kept until all succeed."""

    def __init__(self, plugin: str, version: str) -> None:
        self.plugin, self.version = plugin, version
        self.entries: list[Entry] = []

    def for_kind(self, kind: str) -> Callable[..., None]:
        if kind == "preset":
            return self._register_preset

        def register(name: str, factory: Callable[..., Any], *, config: type = NoConfig,
                     summary: str = "", tiny: dict[str, Any] | None = None,
                     example: Callable[..., Any] | None = None,
                     cost: Callable[..., Any] | None = None) -> None:
            doc = summary or (factory.__doc__ or "").strip().split("\n")[0]
            self.entries.append(Entry(kind, name, factory, config, self.plugin, self.version,
                                      source_location(factory), doc, tiny, example, cost))

        return register

    def _register_preset(self, name: str, spec: str | Path | dict[str, Any], *,
                         summary: str = "") -> None:
        location = str(spec) if not isinstance(spec, dict) else f"<{self.plugin}>"
        self.entries.append(Entry("preset", name, lambda: spec, NoConfig, self.plugin,
                                  self.version, location, summary))


def _preset_path(ref: str) -> Path:
    """``package/relative/path.yaml`` -> the file inside that installed package."""
    package, _, rel = ref.partition("/")
    module = importlib.import_module(package)
    return Path(module.__file__ or "").resolve().parent / rel


def _manifest_presets(module_name: str, presets: dict[str, Any]) -> Any:
    """A hook implementation registering the manifest presets that live in ``module_name``."""

    class ManifestPresets:
        @hookspecs.hookimpl
        def register_presets(self, register: Callable[..., None]) -> None:
            for name, item in presets.items():
                ref = item["path"] if isinstance(item, dict) else item
                if ref.split("/", 1)[0] == module_name:
                    summary = item.get("summary", "") if isinstance(item, dict) else ""
                    register(name, _preset_path(ref), summary=summary)

    return ManifestPresets()


def _load_one(cand: _Candidate, registry: Registry, presets: dict[str, Any]) -> PluginInfo:
    info = PluginInfo(cand.name, cand.version, cand.source)
    if not is_allowed(cand.name):
        info.status = "blocked"
        return info
    try:
        module = cand.load()
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        pm.register(module, name=cand.name)
        if cand.source == "builtin":
            pm.register(_manifest_presets(cand.name, presets), name=f"{cand.name}:manifest")
        pm.check_pending()
        collector = _Collector(cand.name, cand.version)
        for hook_name, kind in hookspecs.HOOK_KINDS.items():
            getattr(pm.hook, hook_name)(register=collector.for_kind(kind))
    except Exception as exc:  # a broken plugin must not break the rest
        info.status, info.error = "failed", f"{type(exc).__name__}: {exc}"
        warnings.warn(f"mmcore plugin {cand.name!r} could not be loaded: {info.error}",
                      PluginWarning, stacklevel=3)
        return info
    for entry in collector.entries:
        registry.add(entry)  # a name claimed twice raises, naming both plugins
        info.registered.append((entry.kind, entry.name))
    return info


def load_plugins() -> tuple[Registry, list[PluginInfo]]:
    """Load every allowed plugin into a fresh registry. Duplicate names raise RegistryError."""
    manifest = read_manifest()
    registry = Registry()
    infos: list[PluginInfo] = []
    candidates = [*_builtin_candidates(manifest["plugins"]), *_entry_point_candidates()]
    seen: set[str] = set()
    for cand in candidates:
        if cand.name in seen:
            raise RegistryError(f"two plugins are both called {cand.name!r}")
        seen.add(cand.name)
        infos.append(_load_one(cand, registry, manifest["presets"]))
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

"""A registry that holds a plugin module whether or not it is installed, for its tests."""

from __future__ import annotations

import importlib

from mmcore.registry import Registry


def plugin_registry(module: str, name: str | None = None) -> Registry:
    """The loaded plugins' registry, plus plugin ``name`` (default: ``module``) loaded from
    ``module`` when no installed entry point loaded it already. A plugin that fails to
    load raises AssertionError with its error."""
    from mmcore import plugins

    name = name or module
    if any(info.name == name and info.status == "loaded" for info in plugins.plugin_infos()):
        return plugins.get_registry()
    registry = Registry()
    for entry in plugins.get_registry().list():
        registry.add(entry)
    candidate = plugins._Candidate(name, lambda: importlib.import_module(module), "local",
                                   "local")
    info = plugins._load_one(candidate, registry)
    if info.status != "loaded":
        raise AssertionError(f"plugin {name!r} ({module}) did not load: {info.error}")
    return registry

"""Hostile plugins: SystemExit or KeyboardInterrupt at import, a config that is no pydantic
model, a factory raising something unexpected. Each disables or reports that plugin only."""

from __future__ import annotations

import os
import signal
import sys
import types
from collections.abc import Iterator

import pytest

import mmcore
from mmcore import hookimpl, plugins
from mmcore.errors import SpecError
from mmcore.hookspecs import Register
from mmcore.plugins import PluginWarning, _Candidate
from mmcore.registry import Entry, NoConfig


@pytest.fixture(autouse=True)
def _restore_plugins() -> Iterator[None]:
    yield
    for name in [m for m in sys.modules if m.startswith("fake_")]:
        del sys.modules[name]
    plugins.reload()


def _with(monkeypatch: pytest.MonkeyPatch, *candidates: _Candidate) -> None:
    monkeypatch.setattr(plugins, "_entry_point_candidates", lambda: iter(candidates))


def _raising(name: str, exc: BaseException) -> _Candidate:
    def load() -> types.ModuleType:
        raise exc
    return _Candidate(name, load, "1.0", "entry-point")


@pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt(), GeneratorExit()])
def test_a_plugin_raising_a_base_exception_at_import_is_only_disabled(
        monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    _with(monkeypatch, _raising("fake-exit", exc))
    with pytest.warns(PluginWarning, match=rf"'fake-exit' could not be loaded: "
                                           rf"{type(exc).__name__}"):
        registry, infos = plugins.load_plugins()
    assert {i.name: i.status for i in infos}["fake-exit"] == "failed"
    assert registry.get("encoder", "vit").plugin == "mmcore_image"


def test_a_real_ctrl_c_while_plugins_load_still_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    def load() -> types.ModuleType:
        os.kill(os.getpid(), signal.SIGINT)  # the user pressing Ctrl-C during the import
        raise AssertionError("unreachable: the signal interrupts first")
    _with(monkeypatch, _Candidate("fake-slow", load, "1.0", "entry-point"))
    with pytest.raises(KeyboardInterrupt):
        plugins.load_plugins()


def test_config_must_be_a_pydantic_model(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("fake_dictconfig")

    @hookimpl
    def register_encoders(register: Register) -> None:
        register("dict-encoder", lambda cfg, ctx: None, config=dict)

    module.register_encoders = register_encoders  # type: ignore[attr-defined]
    _with(monkeypatch, _Candidate("fake-dictconfig", lambda: module, "1.0", "entry-point"))
    with pytest.warns(PluginWarning, match=r"'fake-dictconfig' could not be loaded: "
                                           r"RegistryError: .*config must be a pydantic"):
        registry, _ = plugins.load_plugins()
    assert registry.find("dict-encoder") == []


def test_a_factory_raising_runtime_error_is_a_spec_issue() -> None:
    from mmcore.builder import build
    from mmcore.registry import Registry

    def broken(params: object, ctx: object) -> None:
        raise RuntimeError("device exploded")

    registry = Registry()
    for entry in mmcore.get_registry().list():
        if (entry.kind, entry.name) == ("encoder", "vit"):
            entry = Entry("encoder", "vit", broken, entry.config, "fake", "0", "<fake>", "")
        registry.add(entry)
    with pytest.raises(SpecError, match=r"modalities\.image\.encoder: building it failed: "
                                        r"RuntimeError: device exploded"):
        build(mmcore.load_spec("clip-tiny"), registry=registry, device="meta")


def test_a_self_referencing_preset_is_a_spec_error() -> None:
    from mmcore.registry import Registry
    from mmcore.spec import load_spec

    spec: dict[str, object] = {"name": "loop"}
    spec["self"] = spec
    registry = Registry()
    registry.add(Entry("preset", "fake-loop", lambda: spec, NoConfig, "fake", "0", "<f>", ""))
    with pytest.raises(SpecError, match=r"recursive alias"):
        load_spec("fake-loop", registry=registry)

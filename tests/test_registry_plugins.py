"""The typed registry and plugin loading: discovery, failures, allow/block, entry points."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mmcore import hookimpl, plugins
from mmcore.errors import RegistryError
from mmcore.hookspecs import Register
from mmcore.plugins import ALLOW_ENV, BLOCK_ENV, PluginWarning, _Candidate
from mmcore.registry import NoConfig
from mmcore.testing import check_component

FIRST_PARTY = {"mmcore_image", "mmcore_text", "mmcore_fusions", "mmcore_objectives"}


@pytest.fixture(autouse=True)
def _restore_plugins() -> Iterator[None]:
    """Runs outside monkeypatch: the registry is re-discovered after env vars are restored."""
    modules = set(sys.modules)
    yield
    for name in set(sys.modules) - modules:
        if name.startswith("fake_"):
            del sys.modules[name]
    plugins.reload()


def _plugin_module(name: str, encoders: list[str],
                   fail: Exception | None = None) -> types.ModuleType:
    """A plugin module that registers ``encoders`` (then raises ``fail``, if given)."""
    module = types.ModuleType(name)

    @hookimpl
    def register_encoders(register: Register) -> None:
        for encoder in encoders:
            register(encoder, lambda cfg, ctx: None, config=NoConfig)
        if fail is not None:
            raise fail

    module.register_encoders = register_encoders  # type: ignore[attr-defined]
    return module


def _candidate(name: str, load: Callable[[], types.ModuleType]) -> _Candidate:
    return _Candidate(name, load, "9.9", "entry-point")


def _only(monkeypatch: pytest.MonkeyPatch, *candidates: _Candidate,
          builtins: list[str] | None = None) -> None:
    """Discovery sees just these entry points and ``builtins`` from the manifest."""
    manifest = plugins.read_manifest()
    if builtins is not None:
        manifest["plugins"] = builtins
    monkeypatch.setattr(plugins, "read_manifest", lambda: manifest)
    monkeypatch.setattr(plugins, "_entry_point_candidates", lambda: iter(candidates))


def _loaded(infos: list[plugins.PluginInfo]) -> set[str]:
    return {i.name for i in infos if i.status == "loaded"}


# -- the registry -------------------------------------------------------------------------


def test_list_with_pattern() -> None:
    registry = plugins.get_registry()
    assert [e.name for e in registry.list("encoder", "v?t")] == ["vit"]
    names = [e.name for e in registry.list("tokenizer", "*-embedding")]
    assert names == sorted(names)  # sorted by name
    assert {"patch-embedding", "token-embedding", "tubelet-embedding"} <= set(names)
    assert all(n.endswith("-embedding") for n in names)
    assert "conv-stem" in registry.names("tokenizer") and "conv-stem" not in names
    assert [(e.kind, e.name) for e in registry.list(pattern="late")] == [("fusion", "late")]
    assert registry.list("encoder", "nothing-like-this*") == []


def test_unknown_kind_and_name_suggest() -> None:
    registry = plugins.get_registry()
    with pytest.raises(RegistryError, match=r"unknown kind 'encoders'\. Did you mean 'encoder'"):
        registry.list("encoders")
    with pytest.raises(RegistryError, match=r"unknown encoder 'vti'\. Did you mean 'vit'\?"):
        registry.get("encoder", "vti")


def test_find_gives_plugin_version_and_real_location() -> None:
    (entry,) = plugins.get_registry().find("vit")
    assert (entry.kind, entry.plugin, entry.version) == ("encoder", "mmcore_image", "0.1.0")
    file, _, line = entry.location.rpartition(":")
    source = Path(file).read_text(encoding="utf-8").splitlines()
    assert Path(file).name == "encoder.py"
    assert source[int(line) - 1].startswith("def build_vit(")
    assert entry.describe()["location"] == entry.location
    assert plugins.get_registry().find("no-such-thing") == []


def test_registry_holds_no_modules() -> None:
    """Factories and metadata only: nothing is built when plugins load."""
    for entry in plugins.get_registry().list():
        assert callable(entry.factory)
        assert not any(hasattr(v, "forward") for v in vars(entry).values())


# -- loading ------------------------------------------------------------------------------


def test_first_party_plugins_load_through_the_manifest() -> None:
    infos = {i.name: i for i in plugins.plugin_infos()}
    assert _loaded(list(infos.values())) >= FIRST_PARTY
    assert infos["mmcore_image"].source == "builtin"
    assert ("encoder", "vit") in infos["mmcore_image"].registered


def test_duplicate_registration_names_both_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    first = _plugin_module("fake_first", ["twin"])
    second = _plugin_module("fake_second", ["twin"])
    _only(monkeypatch, _candidate("fake-first", lambda: first),
          _candidate("fake-second", lambda: second), builtins=[])
    with pytest.raises(RegistryError) as info:
        plugins.load_plugins()
    message = str(info.value)
    assert "encoder 'twin' is registered twice" in message
    assert "plugin 'fake-first'" in message and "plugin 'fake-second'" in message


def test_duplicate_of_a_first_party_name(monkeypatch: pytest.MonkeyPatch) -> None:
    thief = _plugin_module("fake_thief", ["vit"])
    _only(monkeypatch, _candidate("fake-thief", lambda: thief))
    with pytest.raises(RegistryError, match=r"by plugin 'mmcore_image'.*by plugin 'fake-thief'"):
        plugins.load_plugins()


def test_plugin_that_raises_on_import_warns_and_the_rest_loads(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "fake_raising.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    manifest = plugins.read_manifest()
    manifest["plugins"] = [*manifest["plugins"], "fake_raising", "fake_not_installed"]
    monkeypatch.setattr(plugins, "read_manifest", lambda: manifest)
    with pytest.warns(PluginWarning) as record:
        registry, infos = plugins.load_plugins()
    messages = [str(w.message) for w in record]
    assert any("'fake_raising' could not be loaded: RuntimeError: boom at import" in m
               for m in messages)
    assert any("'fake_not_installed'" in m and "ModuleNotFoundError" in m for m in messages)
    status = {i.name: i.status for i in infos}
    assert status["fake_raising"] == status["fake_not_installed"] == "failed"
    assert _loaded(infos) >= FIRST_PARTY
    assert registry.get("encoder", "vit").plugin == "mmcore_image"


def test_plugin_failing_midway_registers_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    half = _plugin_module("fake_half", ["half-done"], fail=ValueError("bad config"))
    _only(monkeypatch, _candidate("fake-half", lambda: half))
    with pytest.warns(PluginWarning, match="'fake-half' could not be loaded: ValueError"):
        registry, infos = plugins.load_plugins()
    assert registry.find("half-done") == []
    assert {i.name: i.error for i in infos}["fake-half"] == "ValueError: bad config"


def test_block_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BLOCK_ENV, "mmcore_text, nothing_else")
    registry = plugins.reload()
    assert "token-embedding" not in registry.names("tokenizer")
    assert "patch-embedding" in registry.names("tokenizer")
    status = {i.name: i.status for i in plugins.plugin_infos()}
    assert status["mmcore_text"] == "blocked" and status["mmcore_image"] == "loaded"


def test_allow_env_with_glob(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALLOW_ENV, "mmcore_im*,mmcore_fusions")
    registry = plugins.reload()
    assert _loaded(plugins.plugin_infos()) == {"mmcore_image", "mmcore_fusions"}
    assert registry.names("encoder") == ["vit"]
    assert registry.names("objective") == []


def test_block_wins_over_allow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALLOW_ENV, "mmcore_*")
    monkeypatch.setenv(BLOCK_ENV, "mmcore_image")
    assert not plugins.is_allowed("mmcore_image")
    assert plugins.is_allowed("mmcore_text")
    assert not plugins.is_allowed("someone_elses")
    plugins.reload()
    assert "mmcore_image" not in _loaded(plugins.plugin_infos())


def test_reload_restores_after_env_change(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BLOCK_ENV, "*")
    assert plugins.reload().list() == []
    monkeypatch.delenv(BLOCK_ENV)
    assert "vit" in plugins.reload().names("encoder")


# -- a third-party package through its entry point ----------------------------------------

PLUGIN_SOURCE = '''
import torch
from pydantic import Field
from torch import nn

from mmcore import hookimpl
from mmcore.contract import Encoder, Tokens
from mmcore.registry import ComponentConfig


class ScaleConfig(ComponentConfig):
    width: int | None = Field(None, gt=0)


class Scale(Encoder):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.out_width = width
        self.gain = nn.Parameter(1.0 + 0.1 * torch.randn(width))

    def forward(self, tokens: Tokens) -> Tokens:
        return Tokens(tokens.x * self.gain, tokens.mask)


def build_scale(cfg: ScaleConfig, ctx) -> Scale:
    return Scale(ctx.encoder_width(cfg.width))


@hookimpl
def register_encoders(register):
    register("fake-scale", build_scale, config=ScaleConfig, tiny={},
             summary="multiplies tokens by a learned gain")
'''


def _fake_distribution(root: Path) -> None:
    """A package plus its .dist-info with an ``mmcore.plugins`` entry point, as pip makes."""
    (root / "fake_scale_plugin").mkdir()
    (root / "fake_scale_plugin" / "__init__.py").write_text(PLUGIN_SOURCE)
    info = root / "fake_scale_plugin-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-scale-plugin\n"
                                   "Version: 1.2.3\n")
    (info / "entry_points.txt").write_text("[mmcore.plugins]\nfake-scale = fake_scale_plugin\n")


def test_entry_point_plugin_loads_through_the_same_path(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_distribution(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = plugins.reload()
    (entry,) = registry.find("fake-scale")
    assert (entry.kind, entry.plugin, entry.version) == ("encoder", "fake-scale", "1.2.3")
    assert entry.location.startswith(str(tmp_path / "fake_scale_plugin" / "__init__.py"))
    assert entry.summary == "multiplies tokens by a learned gain"
    info = {i.name: i for i in plugins.plugin_infos()}["fake-scale"]
    assert (info.source, info.status, info.registered) == (
        "entry-point", "loaded", [("encoder", "fake-scale")])
    assert _loaded(plugins.plugin_infos()) >= FIRST_PARTY
    check_component(registry, "encoder", "fake-scale")


def test_entry_point_plugin_obeys_block(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_distribution(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(BLOCK_ENV, "fake-*")
    assert plugins.reload().find("fake-scale") == []
    assert {i.name: i.status for i in plugins.plugin_infos()}["fake-scale"] == "blocked"
    assert "fake_scale_plugin" not in sys.modules  # a blocked plugin is never imported


def test_two_plugins_with_one_name(monkeypatch: pytest.MonkeyPatch) -> None:
    module = _plugin_module("fake_same", [])
    _only(monkeypatch, _candidate("mmcore_image", lambda: module))
    with pytest.raises(RegistryError, match="two plugins are both called 'mmcore_image'"):
        plugins.load_plugins()



# -- robustness: one plugin's mistakes stay with that plugin --------------------------------


def test_a_name_registered_twice_inside_one_plugin_disables_only_that_plugin(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clumsy = _plugin_module("fake_clumsy", ["twice", "once", "twice"])
    fine = _plugin_module("fake_fine", ["fine-encoder"])
    _only(monkeypatch, _candidate("fake-clumsy", lambda: clumsy),
          _candidate("fake-fine", lambda: fine))
    with pytest.warns(PluginWarning, match=r"'fake-clumsy' could not be loaded: RegistryError: "
                                           r"it registers encoder 'twice' twice"):
        registry, infos = plugins.load_plugins()
    status = {i.name: i.status for i in infos}
    assert status["fake-clumsy"] == "failed" and status["fake-fine"] == "loaded"
    assert registry.find("once") == [] and registry.find("twice") == []
    assert registry.get("encoder", "fine-encoder").plugin == "fake-fine"
    assert _loaded(infos) >= FIRST_PARTY


def test_unknown_name_of_a_blocked_plugin_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from mmcore.errors import SpecError
    from mmcore.spec import parse_spec

    monkeypatch.setenv(BLOCK_ENV, "mmcore_fusions")
    registry = plugins.reload()
    assert registry.blocked == {"mmcore_fusions": f"{BLOCK_ENV} blocks it"}
    with pytest.raises(RegistryError) as info:
        registry.get("fusion", "cross-attention")
    assert str(info.value) == ("unknown fusion 'cross-attention'. It may belong to a plugin "
                               "that was not loaded: 'mmcore_fusions' (MMCORE_PLUGINS_BLOCK "
                               "blocks it).")
    spec = {"name": "x", "modalities": {"image": {
        "preprocessor": {"type": "image", "size": 16},
        "tokenizer": {"type": "patch-embedding", "image_size": 16, "patch_size": 8,
                      "width": 16},
        "encoder": {"type": "vit", "layers": 1, "heads": 2}}},
        "fusion": {"type": "cross-attention", "query": "image", "context": "text",
                   "layers": 1, "heads": 2}}
    with pytest.raises(SpecError, match=r"fusion.*'mmcore_fusions' \(MMCORE_PLUGINS_BLOCK "
                                        r"blocks it\)"):
        parse_spec(spec, registry=registry)


def test_allow_list_names_what_it_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALLOW_ENV, "mmcore_image")
    registry = plugins.reload()
    assert registry.blocked["mmcore_text"] == f"{ALLOW_ENV} does not list it"
    with pytest.raises(RegistryError, match=r"'mmcore_text', .*\(MMCORE_PLUGINS_ALLOW does "
                                            r"not list it\)"):
        registry.get("encoder", "text-transformer")


# -- presets, the manifest and the kinds ----------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def test_first_party_presets_are_registered_by_the_plugin_holding_the_spec() -> None:
    presets = plugins.get_registry().list("preset")
    first_party = [e for e in presets if e.plugin.startswith("mmcore_")]
    assert {e.name for e in first_party} >= {"clip-tiny", "clip-vit-b-32", "perceiver-tiny",
                                             "video-transformer", "fusion-compare",
                                             "whisper-large-encoder", "audioclip-tiny"}
    for entry in first_party:
        path = Path(entry.location)
        assert path.is_file() and path == Path(entry.factory())
        assert path.parent.parent == ROOT / "plugins" / entry.plugin  # <plugin>/specs/x.yaml
        assert entry.summary
    specs = {p.resolve() for p in (ROOT / "plugins").glob("mmcore_*/specs/*.yaml")}
    assert specs == {Path(e.location) for e in first_party}  # every shipped spec, once


def test_manifest_lists_plugins_only_and_has_one_copy(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert list(plugins.read_manifest()) == ["plugins"]
    assert plugins.manifest_path() == ROOT / "registry.yaml"
    assert not (ROOT / "mmcore" / "registry.yaml").exists()
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert '"registry.yaml" = "mmcore/registry.yaml"' in pyproject  # the wheel's copy
    old = tmp_path / "registry.yaml"
    old.write_text("plugins: [mmcore_image]\npresets: {x: {path: a/b.yaml}}\n")
    monkeypatch.setattr(plugins, "manifest_path", lambda: old)
    with pytest.raises(RegistryError, match=r"registry\.yaml: the manifest holds one key, "
                                            r"'plugins'; presets are registered by their "
                                            r"plugins"):
        plugins.read_manifest()


def test_kinds_come_from_the_hookspecs() -> None:
    from mmcore import hookspecs, registry

    assert tuple(hookspecs.HOOK_KINDS.values()) == registry.KINDS
    declared = {name for name in vars(hookspecs) if name.startswith("register_")}
    assert declared == set(hookspecs.HOOK_KINDS)
    assert plugins.get_registry().kinds() == registry.KINDS

"""Plugins add CLI verbs through ``register_commands``; the core CLI names no plugin."""

from __future__ import annotations

import argparse
import ast
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from mmcore import hookimpl, plugins
from mmcore.cli import main
from mmcore.hookspecs import Register
from mmcore.plugins import PluginWarning, _Candidate
from mmcore.registry import NoConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _restore_plugins() -> Iterator[None]:
    yield
    plugins.reload()


def _add_greet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", required=True)


def _run_greet(args: argparse.Namespace) -> int:
    """Greet someone and exit with the length of their name."""
    print(f"hello {args.name}")
    return len(args.name)


def _module(name: str, commands: list[tuple[str, object]], *, encoder: str | None = None,
            fail: Exception | None = None) -> types.ModuleType:
    """A plugin registering ``commands`` (name, add_arguments) and optionally an encoder."""
    module = types.ModuleType(name)

    @hookimpl
    def register_commands(register: Register) -> None:
        for command, add in commands:
            register(command, add, _run_greet, summary=f"{command} from {name}")
        if fail is not None:
            raise fail

    @hookimpl
    def register_encoders(register: Register) -> None:
        if encoder is not None:
            register(encoder, lambda cfg, ctx: None, config=NoConfig)

    module.register_commands = register_commands  # type: ignore[attr-defined]
    module.register_encoders = register_encoders  # type: ignore[attr-defined]
    return module


def _install(monkeypatch: pytest.MonkeyPatch, *modules: types.ModuleType) -> None:
    """The first-party plugins plus these modules as entry points, loaded afresh."""
    candidates = [_Candidate(m.__name__, lambda m=m: m, "1.0", "entry-point") for m in modules]
    monkeypatch.setattr(plugins, "_entry_point_candidates", lambda: iter(candidates))
    plugins.reload()


def test_plugin_command_runs_and_is_listed_under_its_plugin(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _install(monkeypatch, _module("fake_greeter", [("greet", _add_greet)]))
    assert main(["greet", "--name", "Ada"]) == 3
    assert capsys.readouterr().out == "hello Ada\n"
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    section = out[out.index("commands from plugins:"):]
    assert "  fake_greeter:\n    greet" in section and "greet from fake_greeter" in section
    assert "  mmcore_whisper:\n    transcribe" in section
    assert "  mmcore_webdataset:\n    shards" in section
    assert main(["greet", "--help"]) == 0
    assert "Greet someone and exit" in capsys.readouterr().out


def test_first_party_commands_come_from_their_plugins() -> None:
    registry = plugins.get_registry()
    owners = {e.name: e.plugin for e in registry.list("command")}
    assert owners == {"transcribe": "mmcore_whisper", "whisper-spec": "mmcore_whisper",
                      "shards": "mmcore_webdataset", "chat": "mmcore_llama",
                      "caption": "mmcore_blip", "capfilt": "mmcore_blip"}
    file, _, line = registry.get("command", "shards").location.rpartition(":")
    assert Path(file).resolve() == ROOT / "plugins" / "mmcore_webdataset" / "cli.py"
    assert Path(file).read_text().splitlines()[int(line) - 1].startswith("def run(")


def test_a_raising_register_commands_warns_and_keeps_everything_else(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    broken = _module("fake_broken", [("broken-verb", _add_greet)], encoder="fake-enc",
                     fail=RuntimeError("no verbs today"))
    with pytest.warns(PluginWarning, match=r"'fake_broken' could not register its commands: "
                                           r"RuntimeError: no verbs today"):
        _install(monkeypatch, broken, _module("fake_greeter", [("greet", _add_greet)]))
    registry = plugins.get_registry()
    assert registry.get("encoder", "fake-enc").plugin == "fake_broken"  # components stay
    assert "broken-verb" not in registry.names("command")
    assert main(["greet", "--name", "Bo"]) == 2
    assert main(["shards", "info", "--help"]) == 0
    info = {i.name: i for i in plugins.plugin_infos()}["fake_broken"]
    assert info.status == "loaded" and info.error.startswith("commands not registered")


def _bad_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--x")
    parser.add_argument("--x")  # argparse refuses the second one


def test_clashing_and_broken_commands_are_left_out_with_a_warning(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.warns(PluginWarning, match=r"plugin 'fake_second': command 'greet' is already "
                                           r"registered by plugin 'fake_first'"):
        _install(monkeypatch,
                 _module("fake_first", [("greet", _add_greet), ("train", _add_greet)]),
                 _module("fake_second", [("greet", _add_greet), ("odd", _bad_arguments)]))
    code = main(["greet", "--name", "Cy"])
    err = capsys.readouterr().err
    assert code == 2
    assert "warning: mmcore plugin 'fake_first': command 'train' is left out: it clashes " \
           "with a core command" in err
    assert "warning: mmcore plugin 'fake_second': command 'odd' is left out: ArgumentError" \
        in err
    assert main(["odd"]) == 2  # not a command: argparse's usage error
    assert "invalid choice: 'odd'" in capsys.readouterr().err
    assert main(["train", "--help"]) == 0
    assert "--stop-after" in capsys.readouterr().out  # still the core train command


def test_core_cli_names_no_plugin() -> None:
    source = (ROOT / "mmcore" / "cli.py").read_text(encoding="utf-8")
    for word in ("mmcore_", "transcribe", "shards", "whisper", "webdataset"):
        assert word not in source, word
    assert len(source.splitlines()) < 500


def _imports(path: Path, package: str) -> set[str]:
    """Modules of ``package`` that ``path`` imports (anywhere in the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else (
            [a.name for a in node.names] if isinstance(node, ast.Import) else [])
        found |= {n for n in names if n.startswith(package + ".")}
    return found


def _cyclic(package: str) -> tuple[list[str], dict[str, set[str]]]:
    """Modules of plugin ``package`` that reach themselves through imports anywhere in
    their files (lazy imports count), and the import graph."""
    folder = ROOT / "plugins" / package
    graph = {f"{package}.{p.stem}": _imports(p, package) for p in folder.glob("*.py")
             if p.stem != "__init__"}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    return sorted(m for m in graph if reaches(m, m, set())), graph


@pytest.mark.parametrize("package", sorted(p.name for p in (ROOT / "plugins").iterdir()
                                           if (p / "__init__.py").is_file()))
def test_no_plugin_has_an_import_cycle(package: str) -> None:
    """A converter's import and export halves, for one, live in two modules of which only
    the export imports the other (the registered class is the export's subclass)."""
    assert _cyclic(package)[0] == []


@pytest.mark.parametrize("package", ["mmcore_whisper", "mmcore_webdataset"])
def test_plugin_modules_import_no_cycle(package: str) -> None:
    cyclic, graph = _cyclic(package)
    assert cyclic == []
    assert f"{package}.cli" in graph
    if package == "mmcore_whisper":
        assert "mmcore_whisper.transcribe" not in graph["mmcore_whisper.decoder"]


def test_no_module_imports_the_version_from_the_package_root() -> None:
    files = [*(ROOT / "mmcore").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")]
    offenders = [str(f) for f in files if "from mmcore import __version__" in f.read_text()]
    assert offenders == []
    import mmcore
    from mmcore._version import __version__

    assert mmcore.__version__ is __version__
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'dynamic = ["version"]' in pyproject and 'path = "mmcore/_version.py"' in pyproject


def test_webdataset_modules_stay_small() -> None:
    for name in ("reading", "writing", "cli", "dataset"):
        lines = (ROOT / "plugins" / "mmcore_webdataset" / f"{name}.py").read_text().splitlines()
        assert len(lines) < 500, name
    assert not (ROOT / "mmcore" / "shards.py").exists()


def test_every_package_ships_py_typed() -> None:
    packages = [ROOT / "mmcore", *sorted((ROOT / "plugins").glob("mmcore_*"))]
    assert len(packages) > 10
    assert [p.name for p in packages if not (p / "py.typed").is_file()] == []

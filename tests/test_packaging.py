"""The editable install exposes exactly the shipped packages, typed (py.typed), so a
third-party plugin type-checks against mmcore and a bare ``plugins`` never imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = '''
from mmcore import hookimpl
from mmcore.hookspecs import Register
from mmcore.registry import ComponentConfig


class WidthConfig(ComponentConfig):
    width: int


@hookimpl
def register_encoders(register: Register) -> None:
    register("typed-encoder", lambda params, ctx: None, config=WidthConfig)
'''


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=240,
                          check=False)


def test_only_shipped_packages_import_outside_the_checkout(tmp_path: Path) -> None:
    code = ("import importlib.util as u, mmcore, mmcore_text; "
            "print(u.find_spec('plugins') is None, u.find_spec('tests') is None)")
    result = _run([sys.executable, "-c", code], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]


@pytest.mark.parametrize("package", ["mmcore", "mmcore_text", "mmcore_whisper"])
def test_packages_ship_py_typed(package: str) -> None:
    import importlib

    module = importlib.import_module(package)
    assert (Path(module.__file__ or "").parent / "py.typed").is_file()


def test_mypy_strict_sees_mmcore_from_a_third_party_plugin(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    (tmp_path / "my_plugin.py").write_text(PLUGIN)
    result = _run([sys.executable, "-m", "mypy", "--strict", "--no-incremental",
                   "--cache-dir", str(tmp_path / ".mypy"), "my_plugin.py"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout

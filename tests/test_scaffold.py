"""mmcore new-plugin writes a package that passes its own tests right after generation."""

from __future__ import annotations

import os
import py_compile
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from mmcore.cli import main
from mmcore.commands import UsageError
from mmcore.scaffold import generate, names
from mmcore.scaffold_templates import KINDS


def _pytest(package: Path) -> subprocess.CompletedProcess[str]:
    """The generated package's tests, as its author runs them (not installed)."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                          cwd=package, capture_output=True, text=True, timeout=240, env=env,
                          check=False)


@pytest.mark.parametrize("kind", ["encoder", "fusion", "command"])
def test_generated_package_passes_its_tests(kind: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / f"mmcore-acme-{kind}"
    assert main(["new-plugin", f"acme_{kind}", "--kind", kind, "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    result = _pytest(out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout and "failed" not in result.stdout


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_writes_a_complete_package(kind: str, tmp_path: Path) -> None:
    root = generate("acme", tmp_path / "pkg", kind)
    project = tomllib.loads((root / "pyproject.toml").read_text())
    assert project["project"]["name"] == "mmcore-acme"
    assert project["project"]["entry-points"]["mmcore.plugins"] == {"acme": "mmcore_acme"}
    for relative in ("src/mmcore_acme/__init__.py", "src/mmcore_acme/component.py",
                     "tests/test_mmcore_acme.py"):
        py_compile.compile(str(root / relative), doraise=True)
    texts = [p.read_text() for p in root.rglob("*") if p.is_file() and p.suffix != ".pyc"]
    assert texts and not any("<<" in text for text in texts)
    assert (root / "README.md").read_text().startswith("# mmcore-acme")


def test_names_and_refusals(tmp_path: Path) -> None:
    assert names("my-plugin")["module"] == "mmcore_my_plugin"
    assert names("mmcore_acme")["plugin"] == "acme"
    with pytest.raises(UsageError, match="plugin name"):
        names("Bad Name")
    generate("acme", tmp_path / "x")
    with pytest.raises(UsageError, match="already exists"):
        generate("acme", tmp_path / "x")
    with pytest.raises(UsageError, match="choose one of"):
        generate("acme", tmp_path / "y", "head")

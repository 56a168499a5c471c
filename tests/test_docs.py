"""Every code block in README.md and docs/ runs, and the site builds strictly.

The conventions (docs/howto/docs-examples.md): python blocks run in order in one namespace
per page, in a temporary folder holding a copy of docs/assets; bash blocks run each
``mmcore ...`` line in-process; yaml blocks parse (and validate as a spec when they hold
``modalities``); toml blocks parse; a block starting ``# docs: skip (REASON)`` is skipped;
blocks without a language are output and are not run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

import mmcore
from mmcore.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
SKIP = re.compile(r"^# docs: skip \(.+\)")


def blocks(page: Path) -> list[tuple[str, str, int]]:
    """(language, body, line) of each fenced block."""
    text = page.read_text(encoding="utf-8")
    return [(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1)
            for m in BLOCK.finditer(text)]


def _id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _skipped(body: str) -> bool:
    first = body.lstrip().splitlines()[0] if body.strip() else ""
    if first.startswith("# docs: skip") and not SKIP.match(first):
        raise AssertionError(f"a skip marker needs a reason: {first!r}")
    return bool(SKIP.match(first))


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(ROOT / "docs" / "assets", tmp_path / "docs" / "assets")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_code_blocks_run(page: Path, workdir: Path) -> None:
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    for language, body, line in blocks(page):
        if language in ("", "text", "console") or _skipped(body):
            continue
        where = f"{_id(page)}:{line}"
        runner = RUNNERS.get(language)
        assert runner is not None, f"{where}: no runner for ```{language} blocks"
        try:
            runner(body, namespace)
        except Exception as exc:
            raise AssertionError(f"{where}: the {language} block fails: "
                                 f"{type(exc).__name__}: {exc}") from exc


def run_python(body: str, namespace: dict[str, object]) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(body, "<docs>", "exec"), namespace)


def run_bash(body: str, namespace: dict[str, object]) -> None:
    for command in _commands(body):
        argv = shlex.split(command, comments=True)
        if not argv:
            continue
        if argv[0] != "mmcore":
            raise AssertionError(f"only mmcore commands run; mark the block "
                                 f"'# docs: skip (REASON)' to show {argv[0]!r}")
        with contextlib.redirect_stdout(io.StringIO()):
            code = main(argv[1:])
        assert code == 0, f"{command!r} exited with {code}"


def _commands(body: str) -> list[str]:
    """Lines, with ``\\`` continuations joined."""
    return body.replace("\\\n", " ").splitlines()


def run_yaml(body: str, namespace: dict[str, object]) -> None:
    data = yaml.safe_load(body)
    if isinstance(data, dict) and "modalities" in data:
        mmcore.load_spec(data)


def run_toml(body: str, namespace: dict[str, object]) -> None:
    tomllib.loads(body)


RUNNERS = {"python": run_python, "bash": run_bash, "yaml": run_yaml, "toml": run_toml}


def test_skip_markers_need_a_reason() -> None:
    assert _skipped("# docs: skip (trains for minutes)\nmmcore train x")
    assert not _skipped("mmcore list preset\n")
    with pytest.raises(AssertionError, match="needs a reason"):
        _skipped("# docs: skip\nmmcore train x")


def test_the_bash_runner_refuses_other_commands() -> None:
    with pytest.raises(AssertionError, match="only mmcore commands run"):
        run_bash("rm -rf /tmp/nothing\n", {})


def test_site_builds_strictly(tmp_path: Path) -> None:
    assert importlib.util.find_spec("mkdocs"), "mkdocs: pip install -e '.[test]'"
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
                             "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
                            capture_output=True, text=True, timeout=280, check=False,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    for page in ("index.html", "reference/cli/index.html", "reference/components/index.html",
                 "reference/presets/index.html", "reference/api/index.html"):
        assert (tmp_path / "site" / page).is_file(), page
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert "mmcore new-plugin" in cli and "mmcore import" in cli

"""The hostile-input corpus (issue 17), each case through the real command line in its own
process, under a memory cap and a timeout (:mod:`hostile.runner`).

Every case must end with a clean exit code (1 or 2 unless it says otherwise), no
traceback, a message naming the problem (the file or the key), and no file changed
outside the folders it may write.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import pytest

from hostile.files import lying_checkpoint
from hostile.generate import CASES, Case, write_assets
from hostile.runner import run_mmcore

Snapshot = dict[str, str]


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")  # the random Whisper folder is written with it
    root = tmp_path_factory.mktemp("hostile-assets")
    write_assets(root)
    return root


def snapshot(root: Path, skip: tuple[str, ...] = ()) -> Snapshot:
    """Path -> content digest of every file under ``root`` (links by target), but ``skip``."""
    out: Snapshot = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if any(rel == s or rel.startswith(s + "/") for s in skip):
            continue
        if path.is_symlink():
            out[rel] = "-> " + str(path.readlink())
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


def _param(case: Case) -> object:
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    return pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_hostile_input_gets_a_clean_error(case: Case, tmp_path: Path, assets: Path) -> None:
    root, logs = tmp_path / "case", tmp_path / "logs"
    root.mkdir()
    logs.mkdir()
    case.write(root)
    if case.lie:
        lying_checkpoint(assets / "clip.safetensors", root / "bad.safetensors", **dict(case.lie))
    if case.break_run is not None:
        shutil.copytree(assets / "run", root / "run", symlinks=True)
        case.break_run(root / "run")
    before, assets_before = snapshot(root, case.writable), snapshot(assets)
    argv = [a.replace("{assets}", str(assets)) for a in case.argv]
    result = run_mmcore(argv, cwd=root, logs=logs, env=case.env, fresh=case.fresh)
    shown = f"exit {result.code}\nstdout:\n{result.out[-2000:]}\nstderr:\n{result.err[-3000:]}"
    assert "Traceback" not in result.err, shown
    assert result.code in case.codes, shown
    assert re.search(case.message, result.err, re.S), shown
    assert snapshot(root, case.writable) == before, "files outside the output changed"
    assert snapshot(assets) == assets_before, "the shared assets changed"
    assert not (tmp_path / "X").exists() and not (tmp_path.parent / "X").exists()
    case.after(root)

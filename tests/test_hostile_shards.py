"""Hostile shard input: path escapes, link loops, lying index files, odd caption rows and
oversized members get clear errors (no traceback, no unbounded memory)."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from mmcore.cli import main
from mmcore_webdataset.index import read_index
from mmcore_webdataset.reading import iter_members
from mmcore_webdataset.writing import read_captions, write_shards


def _folder(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a red star")
    return src


@pytest.mark.parametrize("prefix", ["../../X", "/abs", "a/b", "", ".hidden"])
def test_a_prefix_cannot_escape_the_output_folder(tmp_path: Path, prefix: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    src, out = _folder(tmp_path), tmp_path / "out"
    code = main(["shards", "write", str(src), "--out", str(out), "--prefix", prefix])
    assert code == 1
    assert "must be a plain file-name prefix" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # nothing written


def test_a_symlink_loop_is_a_clear_error(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    src = _folder(tmp_path)
    os.symlink(src / "loop2", src / "loop1")
    os.symlink(src / "loop1", src / "loop2")
    code = main(["shards", "write", str(src), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "cannot read" in err and "loop1" in err and "symbolic link loop" in err


@pytest.mark.parametrize(("index", "message"), [
    ({"shards": "oops"}, r"'shards' must be a list"),
    ([1, 2], r"must hold a JSON object, got list"),
    ({"shards": [{"name": "../x.tar", "samples": 1}]}, r"shards\[0\]\.name must be a file"),
    ({"shards": [{"name": "a.tar", "samples": -1}]}, r"shards\[0\]\.samples must be a count"),
    ({"shards": [["a.tar", 1]]}, r"shards\[0\]\.name"),
])
def test_a_malformed_index_names_the_file_and_key(tmp_path: Path, index: object,
                                                  message: str) -> None:
    (tmp_path / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"index\.json: " + message):
        read_index(tmp_path)
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"index\.json: not valid JSON"):
        read_index(tmp_path)


def test_caption_rows_must_be_objects(tmp_path: Path) -> None:
    captions = tmp_path / "c.jsonl"
    captions.write_text('{"file": "a.png", "caption": "x"}\n["a.png", "x"]\n')
    with pytest.raises(ValueError, match=r"c\.jsonl line 2: a row must be a JSON object"):
        read_captions(captions)
    captions.write_text('{"file": "a.png", "caption": "x"}\n{oops\n')
    with pytest.raises(ValueError, match=r"c\.jsonl line 2: not valid JSON"):
        read_captions(captions)


def test_an_oversized_member_is_refused_without_reading_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.tar"
    with tarfile.open(path, "w") as tar:
        for name, size in (("0.txt", 10), ("1.bin", 5000)):
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(b"x" * size))
    monkeypatch.setenv("MMCORE_LIMIT_SHARD_MEMBER_BYTES", "1000")
    members = iter_members(str(path))
    assert next(members) == ("0.txt", b"x" * 10)
    with pytest.raises(tarfile.ReadError,
                       match=r"1\.bin is 5,000 bytes, over the limit of 1,000 "
                             r"\(raise it with MMCORE_LIMIT_SHARD_MEMBER_BYTES"):
        next(members)


def test_writing_still_works_with_a_plain_prefix(tmp_path: Path) -> None:
    index = write_shards(_folder(tmp_path), tmp_path / "out", prefix="train-v2")
    assert index["shards"][0]["name"] == "train-v2-000000.tar"

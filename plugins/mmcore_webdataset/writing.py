"""Writing tar shards in the webdataset layout from a folder of files and their captions
(what ``mmcore shards write`` runs). Each shard is written atomically; ``index.json`` lists
the shards and their sample counts, which :mod:`mmcore_webdataset.reading` trusts."""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import re
import tarfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmcore_webdataset.index import INDEX_FILE


@dataclass
class FolderSample:
    """Files of one stem in the source folder (extension -> path), plus its caption."""

    stem: str
    files: dict[str, Path]
    caption: str | None = None


def read_captions(path: str | Path) -> dict[str, str]:
    """A captions file -> {file name or stem: caption}. CSV with a header naming a file
    column (file, filename, file_name, path, image, key) and a caption column (caption,
    text), or JSON lines with those keys."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = [_json_row(line, path, n) for n, line in enumerate(text.splitlines(), start=1)
                if line.strip()]
    else:
        rows = list(csv.DictReader(io.StringIO(text)))
    return dict(_caption_row(row, path, n) for n, row in enumerate(rows, start=1))


def _json_row(line: str, path: Path, n: int) -> dict[str, Any]:
    """One JSON-lines row, which must be an object."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} line {n}: not valid JSON ({exc.msg})") from None
    if not isinstance(row, dict):
        raise ValueError(f"{path} line {n}: a row must be a JSON object with file and caption "
                         f"keys, got {type(row).__name__}")
    return row


_FILE_COLUMNS = ("file", "filename", "file_name", "path", "image", "key")
_CAPTION_COLUMNS = ("caption", "text")


def _caption_row(row: Mapping[str, Any], path: Path, n: int) -> tuple[str, str]:
    name = next((row[c] for c in _FILE_COLUMNS if row.get(c) not in (None, "")), None)
    caption = next((row[c] for c in _CAPTION_COLUMNS if row.get(c) is not None), None)
    if name is None or caption is None:
        raise ValueError(f"{path} row {n}: needs a file column ({', '.join(_FILE_COLUMNS)}) "
                         f"and a caption column ({', '.join(_CAPTION_COLUMNS)}); got "
                         f"{sorted(row)}")
    return str(name).replace(os.sep, "/"), str(caption)


def collect_folder(src: str | Path, captions: Mapping[str, str] | None = None,
                   exclude: Sequence[Path] = ()) -> list[FolderSample]:
    """Group a folder's files (recursively, hidden ones skipped) by path without the last
    suffix, sorted. The caption comes from ``captions`` (by file name, relative path or
    stem) or a sidecar ``.txt``."""
    src = Path(src)
    if not src.is_dir():
        raise ValueError(f"{src} is not a folder")
    skip = [p.resolve() for p in exclude]
    groups: dict[str, dict[str, Path]] = {}
    for path in sorted(src.rglob("*")):
        rel, resolved = path.relative_to(src), _resolved(path)
        if (not path.is_file() or any(part.startswith(".") for part in rel.parts)
                or any(s == resolved or s in resolved.parents for s in skip)):
            continue
        stem = rel.with_suffix("").as_posix()
        groups.setdefault(stem, {})[path.suffix.lower().lstrip(".")] = path
    return [FolderSample(stem, files, _caption_for(stem, files, src, captions or {}))
            for stem, files in sorted(groups.items())]


def _resolved(path: Path) -> Path:
    """``path`` with links followed; a link loop or an unreadable link is a clear error."""
    try:
        return path.resolve(strict=False)
    except (RuntimeError, OSError) as exc:
        raise ValueError(f"cannot read {path}: {exc} (a symbolic link loop?)") from None


def _caption_for(stem: str, files: Mapping[str, Path], src: Path,
                 captions: Mapping[str, str]) -> str | None:
    names = [p.relative_to(src).as_posix() for p in files.values()]
    names += [p.name for p in files.values()] + [stem]
    return next((captions[n] for n in names if n in captions), None)


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    """A tar header with fixed metadata, so equal inputs give byte-identical shards."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info, io.BytesIO(data)


def _sample_members(sample: FolderSample, key: str) -> list[tuple[str, bytes]]:
    files = {ext: path.read_bytes() for ext, path in sample.files.items()}
    if sample.caption is not None:
        files["txt"] = sample.caption.encode("utf-8")
    files.setdefault("json", json.dumps({"key": key, "source": sample.stem}).encode())
    return [(f"{key}.{ext}", data) for ext, data in sorted(files.items())]


def write_shard(path: Path, members: Iterable[tuple[str, bytes]]) -> int:
    """Write one tar atomically (a temporary file, then a rename); returns its size."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for name, data in members:
                tar.addfile(*_member(name, data))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path.stat().st_size


def write_shards(src: str | Path, out: str | Path, *, shard_size: int = 1000,
                 captions: str | Path | None = None, prefix: str = "data",
                 overwrite: bool = False) -> dict[str, Any]:
    """Write the files of ``src`` as shards ``out/{prefix}-000000.tar, ...`` of
    ``shard_size`` samples with keys ``000000000, 000000001, ...`` in sorted order, plus
    ``index.json`` (shard names, sample counts). Returns the index."""
    if shard_size <= 0:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", prefix):
        raise ValueError(f"--prefix {prefix!r} must be a plain file-name prefix (letters, "
                         "digits, '.', '_', '-'); shards are always written inside --out")
    out = Path(out)
    _prepare_out(out, prefix, overwrite)
    mapping = read_captions(captions) if captions is not None else None
    excluded = [Path(captions)] if captions is not None else []
    samples = collect_folder(src, mapping, exclude=[*excluded, out])
    if not samples:
        raise ValueError(f"{src} holds no files to write")
    width = max(9, len(str(len(samples) - 1)))
    shards: list[dict[str, Any]] = []
    for number, start in enumerate(range(0, len(samples), shard_size)):
        chunk = samples[start : start + shard_size]
        name = f"{prefix}-{number:06d}.tar"
        members = (m for i, s in enumerate(chunk, start)
                   for m in _sample_members(s, f"{i:0{width}d}"))
        shards.append({"name": name, "samples": len(chunk),
                       "bytes": write_shard(out / name, members)})
    index = _index(samples, shards, shard_size, prefix)
    _write_json(out / INDEX_FILE, index)
    return index


def _prepare_out(out: Path, prefix: str, overwrite: bool) -> None:
    old = [*sorted(out.glob(f"{glob.escape(prefix)}-*.tar")), out / INDEX_FILE]
    old = [p for p in old if p.exists()]
    if old and not overwrite:
        raise FileExistsError(f"{out} already holds shards ({old[0].name}, ...); choose "
                              "another folder or overwrite them (--overwrite)")
    for path in old:
        path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _index(samples: Sequence[FolderSample], shards: list[dict[str, Any]], shard_size: int,
           prefix: str) -> dict[str, Any]:
    extensions: Counter[str] = Counter()
    for sample in samples:
        extensions.update({*sample.files, "json", *(["txt"] if sample.caption else [])})
    last = len(shards) - 1
    return {"format": "webdataset", "version": 1, "samples": len(samples),
            "shard_size": shard_size, "pattern": f"{prefix}-{{000000..{last:06d}}}.tar",
            "uncaptioned": sum(1 for s in samples if "txt" not in s.files and s.caption is None),
            "extensions": dict(sorted(extensions.items())), "shards": shards}


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)

"""A shard folder's ``index.json``: shard names and sample counts, validated on read."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

INDEX_FILE = "index.json"


def read_index(directory: str | Path) -> dict[str, Any] | None:
    """A shard folder's ``index.json`` (see :func:`write_shards`), or None without one."""
    path = Path(directory) / INDEX_FILE
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    _check_index(index, path)
    return dict(index)


def _check_index(index: Any, path: Path) -> None:
    """ValueError naming the file and key unless ``index`` lists shards as
    ``{"shards": [{"name": "x.tar", "samples": N}, ...]}`` with plain file names."""
    if not isinstance(index, dict):
        raise ValueError(f"{path}: must hold a JSON object, got {type(index).__name__}")
    shards = index.get("shards")
    if not isinstance(shards, list):
        raise ValueError(f"{path}: 'shards' must be a list of {{name, samples}} objects, "
                         f"got {type(shards).__name__}")
    for i, entry in enumerate(shards):
        name = entry.get("name") if isinstance(entry, dict) else None
        samples = entry.get("samples") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name or name != os.path.basename(name) \
                or name in (".", ".."):
            raise ValueError(f"{path}: shards[{i}].name must be a file name in the folder, "
                             f"got {name!r}")
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
            raise ValueError(f"{path}: shards[{i}].samples must be a count >= 0, got "
                             f"{samples!r}")

"""Models by hub name: ``hf://ORG/NAME[@REVISION]`` resolves to a folder in the standard
Hugging Face cache.

Downloads go through ``huggingface_hub.snapshot_download`` into the cache that
``HF_HUB_CACHE`` or ``HF_HOME`` names (default ``~/.cache/huggingface/hub``), read when a
name is resolved, not when Python starts. With ``HF_HUB_OFFLINE=1`` the cache alone serves;
a model that is not there is one clear error. Only what converters read is fetched
(configs, safetensors, tokenizer and vocabulary files), never pickled weights.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from mmcore.errors import CheckpointError

#: The scheme of a Hugging Face Hub model name.
HF_SCHEME = "hf://"
#: What a snapshot download fetches: everything a converter reads, no pickles.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]

_NAME = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def is_hub_name(source: object) -> bool:
    """Whether ``source`` is a hub name (``hf://ORG/NAME[@REVISION]``), not a path."""
    return isinstance(source, str) and source.startswith(HF_SCHEME)


def parse(source: str) -> tuple[str, str | None]:
    """``hf://ORG/NAME[@REVISION]`` -> (``ORG/NAME``, revision or None)."""
    name, _, revision = source.removeprefix(HF_SCHEME).partition("@")
    if not _NAME.match(name) or (revision == "" and "@" in source):
        raise CheckpointError(f"{source!r} is not a hub name; write hf://ORG/NAME or "
                              "hf://ORG/NAME@REVISION")
    return name, revision or None


def cache_dir() -> Path:
    """The hub cache: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(
        os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "huggingface"
    return Path(home).expanduser() / "hub"


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` forbids downloads (1, true, yes, on)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def resolve(source: str | Path) -> Path:
    """A local path for ``source``: a hub name's snapshot folder (downloaded unless cached
    or offline); any other source as a Path, unchanged."""
    if not is_hub_name(source):
        return Path(source)
    name, revision = parse(str(source))
    try:
        folder = _snapshot(name, revision)
    except ImportError:
        raise CheckpointError(f"{source}: hub names need the huggingface_hub package "
                              "(pip install huggingface_hub)") from None
    except Exception as exc:
        raise _hub_error(str(source), exc) from exc
    return Path(folder)


def _snapshot(name: str, revision: str | None) -> str:
    from huggingface_hub import snapshot_download

    folder: str = snapshot_download(name, revision=revision, cache_dir=cache_dir(),
                                    local_files_only=offline(),
                                    allow_patterns=ALLOW_PATTERNS)
    return folder


def _hub_error(source: str, exc: Exception) -> CheckpointError:
    """One line saying why ``source`` could not be had."""
    kind = type(exc).__name__
    if offline():
        return CheckpointError(f"{source} is not in the Hugging Face cache ({cache_dir()}) and "
                               "HF_HUB_OFFLINE=1 forbids downloading it: run once online, or "
                               "unset HF_HUB_OFFLINE")
    if kind in {"RepositoryNotFoundError", "RevisionNotFoundError", "GatedRepoError"}:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else kind
        return CheckpointError(f"{source}: {first}")
    return CheckpointError(f"{source} could not be downloaded ({kind}: "
                           f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); "
                           "the cache is used when it holds the model")


def pretrained_sources(registry: Any = None) -> list[dict[str, str]]:
    """Every preset's known pretrained sources: preset, hub name, converter, plugin."""
    from mmcore.plugins import get_registry

    reg = registry or get_registry()
    rows = []
    for entry in reg.list("preset"):
        for hub_name, converter in (getattr(entry, "pretrained", None) or {}).items():
            rows.append({"preset": entry.name, "source": hub_name, "converter": converter,
                         "plugin": entry.plugin})
    return rows

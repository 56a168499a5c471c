"""Files a model reads besides its weights (tokenizer.json, vocab.json, ...), carried inside
its checkpoint so that a saved model works without the folder it was imported from.

A component config declares which of its parameters name such files with a class
attribute, dotted for nested models::

    class HFTokenizerConfig(ComponentConfig):
        asset_fields: ClassVar[tuple[str, ...]] = ("path",)
        path: str

:func:`mmcore.checkpoint.save` embeds each declared file that exists (metadata key
``assets``: JSON ``{location: {"name", "sha256", "encoding", "data"}}``, ``location``
being the spec key path such as ``modalities.text.preprocessor.path``) and stores
``asset:NAME`` in the spec in place of the path. :func:`mmcore.checkpoint.load` writes
the files back into a content-addressed folder (``MMCORE_CACHE``, default
``~/.cache/mmcore``; ``assets/SHA256/NAME``) and points the spec at them, so preprocessors
keep reading plain paths.

Exporters read a model's files with :func:`model_assets` (location -> bytes), whether the
model was just imported (the source folder's files) or loaded from a checkpoint.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mmcore.errors import CheckpointError, RegistryError
from mmcore.limits import Limit

#: metadata key of the embedded files
ASSETS_KEY = "assets"
#: what a stored spec holds in place of an embedded file's path
ASSET_PREFIX = "asset:"
ASSET_BYTES = Limit("asset_bytes", 64 << 20,
                    "the files (tokenizers) embedded in one checkpoint, in bytes")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHA = re.compile(r"[0-9a-f]{64}")


def cache_root() -> Path:
    """Where loaded checkpoints' files are written: ``MMCORE_CACHE``, else
    ``$XDG_CACHE_HOME/mmcore``, else ``~/.cache/mmcore``."""
    given = os.environ.get("MMCORE_CACHE")
    if given:
        return Path(given).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "mmcore"


def asset_locations(spec: Any, registry: Any = None) -> list[str]:
    """The spec key paths (``modalities.text.preprocessor.path``, ...) of every parameter
    of ``spec`` (a ModelSpec) that its component's config declares a file
    (``asset_fields``). Components of unknown types are skipped."""
    from mmcore.plugins import get_registry

    reg = registry or get_registry()
    out = []
    for path, kind, ref in spec.components():
        try:
            config = reg.get(kind, ref.type).config
        except RegistryError:
            continue
        out += [f"{path}.{field}" for field in getattr(config, "asset_fields", ())]
    return out


def _get(data: Any, location: str) -> Any:
    node = data
    for part in location.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set(data: dict[str, Any], location: str, value: str) -> None:
    *parents, last = location.split(".")
    node = data
    for part in parents:
        node = node[part]
    node[last] = value


def _files(spec: Any, data: Mapping[str, Any], registry: Any = None
           ) -> Iterator[tuple[str, Path]]:
    """(location, existing file) for each declared file parameter of ``spec``."""
    for location in asset_locations(spec, registry):
        value = _get(data, location)
        if isinstance(value, str) and not value.startswith(ASSET_PREFIX) \
                and Path(value).is_file():
            yield location, Path(value)


def model_assets(model: Any, registry: Any = None) -> dict[str, bytes]:
    """The files ``model`` reads besides its weights: spec key path of the parameter naming
    the file (e.g. ``modalities.text.preprocessor.path`` for a ``tokenizer.json``,
    ``modalities.text.preprocessor.vocab`` / ``.merges`` for ``clip-bpe``) -> its bytes.

    An exporter writes e.g. ``model_assets(model)["modalities.text.preprocessor.path"]``
    as ``tokenizer.json``; a location is absent when the model has no such file (a
    ``byte-text`` model). Works for imported and for loaded models alike."""
    spec = getattr(model, "spec", None)
    if spec is None:
        return {}
    return {loc: file.read_bytes() for loc, file in _files(spec, spec.to_dict(), registry)}


def _record(name: str, content: bytes) -> dict[str, str]:
    try:
        data, encoding = content.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        data, encoding = base64.b64encode(content).decode("ascii"), "base64"
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip("._-") or "file"
    return {"name": safe[:128], "sha256": hashlib.sha256(content).hexdigest(),
            "encoding": encoding, "data": data}


def embed(spec: Any, data: dict[str, Any], registry: Any = None) -> str | None:
    """Embed the files ``spec`` declares: ``data`` (its ``to_dict()``, changed in place)
    gets ``asset:NAME`` for each; -> the ``assets`` metadata value, None when there are
    none. Files over :data:`ASSET_BYTES` in all are left as paths, with a warning."""
    records: dict[str, dict[str, str]] = {}
    total, limit = 0, ASSET_BYTES.value()
    for location, file in _files(spec, data, registry):
        content = file.read_bytes()
        total += len(content)
        if total > limit:
            warnings.warn(f"{file} is not embedded in the checkpoint: its files exceed "
                          f"{limit:,} bytes {ASSET_BYTES.hint()}; the checkpoint needs "
                          "that path to stay", stacklevel=3)
            continue
        records[location] = _record(file.name, content)
        _set(data, location, ASSET_PREFIX + records[location]["name"])
    return json.dumps(records, ensure_ascii=False) if records else None


def _decode(record: Mapping[str, Any], where: str) -> tuple[str, bytes]:
    """(file name, content) of one record, every field checked."""
    name, sha, encoding, data = (record.get(k) for k in ("name", "sha256", "encoding", "data"))
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise CheckpointError(f"{where}: file name {name!r} is not a plain file name")
    if not isinstance(sha, str) or not _SHA.fullmatch(sha):
        raise CheckpointError(f"{where}: sha256 {sha!r} is not a sha256 in hex")
    if not isinstance(data, str) or encoding not in ("utf-8", "base64"):
        raise CheckpointError(f"{where}: needs string data and encoding utf-8 or base64")
    try:
        content = data.encode("utf-8") if encoding == "utf-8" else base64.b64decode(
            data, validate=True)
    except (ValueError, UnicodeEncodeError):
        raise CheckpointError(f"{where}: data is not valid {encoding}") from None
    if hashlib.sha256(content).hexdigest() != sha:
        raise CheckpointError(f"{where}: content does not match its sha256 {sha[:12]}...")
    return name, content


def _materialise(name: str, sha: str, content: bytes) -> Path:
    """``CACHE/assets/SHA256/NAME`` holding ``content`` (written atomically if absent)."""
    target = cache_root() / "assets" / sha / name
    if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == sha:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def restore(data: dict[str, Any], meta: Mapping[str, str], path: Path) -> dict[str, Any]:
    """Write the files embedded in checkpoint ``path`` (metadata ``meta``) to the cache and
    point ``data`` (its spec mapping, changed in place and returned) at them.

    CheckpointError naming the file for records that are malformed, too large in all
    (:data:`ASSET_BYTES`), fail their sha256, or point at no ``asset:`` spec parameter."""
    text = meta.get(ASSETS_KEY)
    if not text:
        return data
    limit = ASSET_BYTES.value()
    if len(text) > 2 * limit:  # base64 and JSON escapes stay well under 2x
        raise CheckpointError(f"{path}: its embedded files ({len(text):,} bytes of metadata) "
                              f"exceed the limit of {limit:,} bytes {ASSET_BYTES.hint()}")
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: metadata {ASSETS_KEY!r} is not valid JSON "
                              f"({exc.msg} at character {exc.pos})") from None
    if not isinstance(records, dict):
        raise CheckpointError(f"{path}: metadata {ASSETS_KEY!r} must be a JSON object")
    decoded, total = {}, 0
    for location, record in records.items():
        where = f"{path}: embedded file {location!r}"
        value = _get(data, location) if isinstance(location, str) else None
        if not isinstance(value, str) or not value.startswith(ASSET_PREFIX):
            raise CheckpointError(f"{where} belongs to no asset: parameter of the spec")
        if not isinstance(record, dict):
            raise CheckpointError(f"{where} must be a JSON object")
        name, content = _decode(record, where)
        total += len(content)
        if total > limit:
            raise CheckpointError(f"{path}: its embedded files exceed {limit:,} bytes "
                                  f"{ASSET_BYTES.hint()}")
        decoded[location] = (name, record["sha256"], content)
    for location, (name, sha, content) in decoded.items():
        _set(data, location, str(_materialise(name, sha, content)))
    return data

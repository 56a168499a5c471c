"""Files a model reads besides its weights (tokenizer.json, vocab.json, ...), carried inside
its checkpoint so that a saved model works without the folder it was imported from.

A component config declares which of its parameters name such files with a class
attribute, dotted for nested models::

    class HFTokenizerConfig(ComponentConfig):
        asset_fields: ClassVar[tuple[str, ...]] = ("path",)
        #: files beside it that travel with it when present
        asset_sidecars: ClassVar[tuple[str, ...]] = ("tokenizer_config.json",)
        path: str

:func:`mmcore.checkpoint.save` embeds each declared file that exists, with its sidecars
(metadata key ``assets``: JSON ``{location: {"name": file, "files": {name: {"sha256",
"encoding", "data"}}}}``, ``location`` being the spec key path such as
``modalities.text.preprocessor.path``) and stores ``asset:NAME`` in the spec in place of
the path. :func:`mmcore.checkpoint.load` writes the files back into a content-addressed
folder (``MMCORE_CACHE``, default ``~/.cache/mmcore``; ``assets/DIGEST/NAME``, sidecars
beside it) and points the spec at them, so preprocessors keep reading plain paths.

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


def _declared(spec: Any, registry: Any = None) -> list[tuple[str, tuple[str, ...]]]:
    """(location, sidecar file names) of every file parameter ``spec`` declares."""
    from mmcore.plugins import get_registry

    reg = registry or get_registry()
    out = []
    for path, kind, ref in spec.components():
        try:
            config = reg.get(kind, ref.type).config
        except RegistryError:
            continue
        sidecars = tuple(getattr(config, "asset_sidecars", ()))
        out += [(f"{path}.{field}", sidecars) for field in getattr(config, "asset_fields", ())]
    return out


def asset_locations(spec: Any, registry: Any = None) -> list[str]:
    """The spec key paths (``modalities.text.preprocessor.path``, ...) of every parameter
    of ``spec`` (a ModelSpec) that its component's config declares a file
    (``asset_fields``). Components of unknown types are skipped."""
    return [location for location, _ in _declared(spec, registry)]


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
           ) -> Iterator[tuple[str, list[Path]]]:
    """(location, [the file, its sidecars that exist]) for each declared file parameter of
    ``spec`` naming an existing file."""
    for location, sidecars in _declared(spec, registry):
        value = _get(data, location)
        if isinstance(value, str) and not value.startswith(ASSET_PREFIX) \
                and Path(value).is_file():
            main = Path(value)
            extra = [main.with_name(n) for n in sidecars if n != main.name]
            yield location, [main, *(f for f in extra if f.is_file())]


def asset_files(model: Any, registry: Any = None) -> dict[str, dict[str, bytes]]:
    """Like :func:`model_assets`, with each file's declared sidecars (an ``hf-tokenizer``'s
    ``tokenizer_config.json`` and ``special_tokens_map.json`` where the source had them):
    location -> {file name: bytes}, the file itself first."""
    spec = getattr(model, "spec", None)
    if spec is None:
        return {}
    return {loc: {f.name: f.read_bytes() for f in files}
            for loc, files in _files(spec, spec.to_dict(), registry)}


def model_assets(model: Any, registry: Any = None) -> dict[str, bytes]:
    """The files ``model`` reads besides its weights: spec key path of the parameter naming
    the file (e.g. ``modalities.text.preprocessor.path`` for a ``tokenizer.json``,
    ``modalities.text.preprocessor.vocab`` / ``.merges`` for ``clip-bpe``) -> its bytes.

    An exporter writes e.g. ``model_assets(model)["modalities.text.preprocessor.path"]``
    as ``tokenizer.json``; a location is absent when the model has no such file (a
    ``byte-text`` model). Works for imported and for loaded models alike;
    :func:`asset_files` adds the sidecar files (``tokenizer_config.json``, ...)."""
    return {loc: next(iter(files.values())) for loc, files in asset_files(model, registry).items()}


def _safe_name(name: str) -> str:
    return (re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip("._-") or "file")[:128]


def _encode(content: bytes) -> dict[str, str]:
    try:
        data, encoding = content.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        data, encoding = base64.b64encode(content).decode("ascii"), "base64"
    return {"sha256": hashlib.sha256(content).hexdigest(), "encoding": encoding, "data": data}


def embed(spec: Any, data: dict[str, Any], registry: Any = None) -> str | None:
    """Embed the files ``spec`` declares: ``data`` (its ``to_dict()``, changed in place)
    gets ``asset:NAME`` for each; -> the ``assets`` metadata value (JSON ``{location:
    {"name": file, "files": {name: {"sha256", "encoding", "data"}}}}``), None when there
    are none. Files over :data:`ASSET_BYTES` in all are left as paths, with a warning."""
    records: dict[str, dict[str, Any]] = {}
    total, limit = 0, int(ASSET_BYTES.value())
    for location, files in _files(spec, data, registry):
        contents = {_safe_name(f.name): f.read_bytes() for f in files}
        total += sum(len(c) for c in contents.values())
        if total > limit:
            warnings.warn(f"{files[0]} is not embedded in the checkpoint: its files exceed "
                          f"{limit:,} bytes {ASSET_BYTES.hint()}; the checkpoint needs "
                          "that path to stay", stacklevel=3)
            continue
        main = next(iter(contents))
        records[location] = {"name": main,
                             "files": {n: _encode(c) for n, c in contents.items()}}
        _set(data, location, ASSET_PREFIX + main)
    return json.dumps(records, ensure_ascii=False) if records else None


def _decode(name: Any, record: Any, where: str) -> bytes:
    """The content of one embedded file, every field checked."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise CheckpointError(f"{where}: file name {name!r} is not a plain file name")
    if not isinstance(record, dict):
        raise CheckpointError(f"{where}: file {name!r} must be a JSON object")
    sha, encoding, data = (record.get(k) for k in ("sha256", "encoding", "data"))
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
        raise CheckpointError(f"{where}: {name} does not match its sha256 {sha[:12]}...")
    return content


def _write(target: Path, content: bytes) -> None:
    """``target`` holding ``content``, written atomically unless it already does."""
    if target.is_file() and target.read_bytes() == content:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _materialise(main: str, files: Mapping[str, bytes]) -> Path:
    """``CACHE/assets/DIGEST/`` holding ``files`` (DIGEST: of their names and contents);
    -> the path of ``main`` there."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{hashlib.sha256(files[name]).hexdigest()}\n".encode())
    folder = cache_root() / "assets" / digest.hexdigest()
    for name, content in files.items():
        _write(folder / name, content)
    return folder / main


def _records(text: str, path: Path, limit: int) -> dict[str, Any]:
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
    return records


def restore(data: dict[str, Any], meta: Mapping[str, str], path: Path) -> dict[str, Any]:
    """Write the files embedded in checkpoint ``path`` (metadata ``meta``) to the cache and
    point ``data`` (its spec mapping, changed in place and returned) at them.

    CheckpointError naming the file for records that are malformed, too large in all
    (:data:`ASSET_BYTES`), fail their sha256, or point at no ``asset:`` spec parameter."""
    text = meta.get(ASSETS_KEY)
    if not text:
        return data
    limit = int(ASSET_BYTES.value())
    decoded: dict[str, tuple[str, dict[str, bytes]]] = {}
    total = 0
    for location, record in _records(text, path, limit).items():
        where = f"{path}: embedded file {location!r}"
        value = _get(data, location) if isinstance(location, str) else None
        if not isinstance(value, str) or not value.startswith(ASSET_PREFIX):
            raise CheckpointError(f"{where} belongs to no asset: parameter of the spec")
        files = record.get("files") if isinstance(record, dict) else None
        main = record.get("name") if isinstance(record, dict) else None
        if not isinstance(files, dict) or main not in files:
            raise CheckpointError(f"{where} must be an object with 'name' and 'files' "
                                  "(holding that name)")
        contents = {}
        for name, item in files.items():
            contents[name] = _decode(name, item, where)
            total += len(contents[name])
            if total > limit:
                raise CheckpointError(f"{path}: its embedded files exceed {limit:,} bytes "
                                      f"{ASSET_BYTES.hint()}")
        decoded[location] = (str(main), contents)
    for location, (main, contents) in decoded.items():
        _set(data, location, str(_materialise(main, contents)))
    return data

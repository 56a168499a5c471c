"""Shared helpers for Hugging Face checkpoint folders: every HF converter uses these.

* **config**: :func:`read_config` reads ``config.json`` (a JSON object, optionally of one
  ``model_type``); :func:`with_defaults` fills in the class defaults HF leaves out.
* **weights**: :func:`read_weights` reads ``model.safetensors`` or the shards listed by
  ``model.safetensors.index.json`` (validated: every shard inside the folder, every listed
  tensor present). Pickles (``pytorch_model.bin``, ``.pt``) are refused by name, because
  unpickling can run code; :func:`load_torch_weights` is the one opt-in exception and
  loads only through ``torch.load(weights_only=True)``.
* **activations**: :data:`ACTIVATIONS` maps HF ``hidden_act`` names to mmcore's;
  :func:`activation` / :func:`hf_activation` convert with errors naming the key.
* **keys**: :class:`KeyMap` renames a state dict by ordered ``(pattern, replacement)`` rules
  and fails on any key it cannot place, naming every one; it never drops a key silently.

Nothing here imports ``transformers``.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from mmcore.errors import CheckpointError

CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
#: pickled weight files HF folders may hold instead of safetensors
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt",
                "model.ckpt", "pytorch_model.pt")
#: suffixes :func:`load_torch_weights` accepts
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
#: how many key names an error lists before "and N more"
SHOWN = 8

# -- JSON and config.json ---------------------------------------------------------------


def read_json(path: Path) -> Any:
    """A JSON file's content; CheckpointError naming the file when missing or invalid."""
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist (expected a JSON file)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: not valid JSON ({exc})") from None


def read_json_object(path: Path, *, missing_ok: bool = False) -> dict[str, Any]:
    """A JSON object from ``path`` ({} for a missing file when ``missing_ok``)."""
    if missing_ok and not path.is_file():
        return {}
    data = read_json(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a JSON {type(data).__name__}, not an object")
    return data


def read_config(folder: Path, model_type: str | None = None) -> dict[str, Any]:
    """``folder/config.json`` as a dict; with ``model_type``, CheckpointError unless the
    config's ``model_type`` is that."""
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{folder} has no {CONFIG}")
    data = read_json_object(path)
    if model_type is not None and data.get("model_type") != model_type:
        raise CheckpointError(f"{path}: model_type is {data.get('model_type')!r}, "
                              f"not {model_type!r}")
    return data


def config_model_type(folder: Path) -> str | None:
    """The ``model_type`` of ``folder/config.json``, or None when there is no readable one
    (never raises: for converters' ``detect``)."""
    path = Path(folder) / CONFIG
    if not path.is_file():
        return None
    try:
        value = read_json_object(path).get("model_type")
    except CheckpointError:
        return None
    return value if isinstance(value, str) else None


def with_defaults(given: Mapping[str, Any] | None,
                  defaults: Mapping[str, Any]) -> dict[str, Any]:
    """``defaults`` overridden by ``given``; a None value means the default, as HF reads
    configs saved as diffs. Keys only in ``given`` are kept."""
    out = dict(defaults)
    out.update({k: v for k, v in (given or {}).items() if v is not None})
    return out


# -- weights ----------------------------------------------------------------------------


def is_pickle(path: Path) -> bool:
    """Whether ``path`` starts like a pickle (0x80) or a ``torch.save`` zip ("PK") rather
    than safetensors (a u64 header length, then ``{``)."""
    with path.open("rb") as fh:
        head = fh.read(9)
    return head[8:9] != b"{" and (head[:1] == b"\x80" or head[:2] == b"PK")


def _refuse_pickle(path: Path) -> None:
    if is_pickle(path):
        raise CheckpointError(
            f"{path} is a pickle (torch.save) file, not safetensors (its header looks like a "
            "pickle); mmcore reads safetensors because unpickling can run code: convert it "
            "to safetensors with a trusted tool")


def read_safetensors(path: Path, keys: Iterable[str] | None = None) -> dict[str, Tensor]:
    """The tensors of one safetensors file (only ``keys`` when given: each must be there).
    CheckpointError for a missing, pickled, corrupt or incomplete file."""
    if not path.is_file():
        raise CheckpointError(f"no weights file at {path}")
    _refuse_pickle(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            present = set(fh.keys())
            wanted = list(present) if keys is None else list(keys)
            missing = [k for k in wanted if k not in present]
            if missing:
                raise CheckpointError(f"{path} lacks tensor(s) {_names(missing)}")
            return {k: fh.get_tensor(k) for k in wanted}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file "
                              f"(corrupt or truncated?): {exc}") from None


def safetensors_keys(path: Path) -> list[str]:
    """The tensor names in a safetensors header (reads no data); [] if unreadable."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            return list(fh.keys())
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return []


def _shard_path(folder: Path, name: str, index: Path) -> Path:
    """``folder/name``, refused when it escapes the folder or is not safetensors."""
    path = folder / name
    root = folder.resolve()
    if Path(name).is_absolute() or root not in (path.resolve(), *path.resolve().parents):
        raise CheckpointError(f"{index}: shard {name!r} lies outside {folder}")
    if not name.endswith(".safetensors"):
        raise CheckpointError(f"{index}: shard {name!r} is not a .safetensors file")
    if not path.is_file():
        raise CheckpointError(f"{index}: shard {name!r} is missing from {folder}")
    return path


def index_name(name: str = SAFETENSORS) -> str:
    """The shard index file of weights file ``name`` (``model.safetensors`` ->
    ``model.safetensors.index.json``; diffusers: ``diffusion_pytorch_model.safetensors``)."""
    return f"{name}.index.json"


def read_shard_index(folder: Path, name: str = SAFETENSORS) -> dict[str, str]:
    """The validated ``weight_map`` (tensor name -> shard file) of
    ``folder/model.safetensors.index.json`` (the index of weights file ``name``)."""
    index = Path(folder) / index_name(name)
    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: weight_map must be a non-empty object of "
                              "tensor name -> shard file")
    bad = [k for k, v in weight_map.items() if not isinstance(v, str) or not v]
    if bad:
        raise CheckpointError(f"{index}: weight_map.{bad[0]} must be a shard file name, "
                              f"got {weight_map[bad[0]]!r}")
    for name in sorted(set(weight_map.values())):
        _shard_path(Path(folder), name, index)
    return dict(weight_map)


def _read_sharded(folder: Path, name: str = SAFETENSORS) -> dict[str, Tensor]:
    weight_map = read_shard_index(folder, name)
    index = folder / index_name(name)
    by_shard: dict[str, list[str]] = {}
    for key, shard in weight_map.items():
        by_shard.setdefault(shard, []).append(key)
    tensors: dict[str, Tensor] = {}
    for shard, keys in sorted(by_shard.items()):
        path = _shard_path(folder, shard, index)
        extra = sorted(set(safetensors_keys(path)) - set(keys))
        if extra:
            raise CheckpointError(f"{index} does not list tensor(s) {_names(extra)} "
                                  f"of shard {shard}")
        tensors.update(read_safetensors(path, keys))
    return tensors


def has_weights(folder: Path, name: str = SAFETENSORS) -> bool:
    """Whether ``folder`` holds weights file ``name`` (``model.safetensors``) or its shard
    index."""
    return (folder / name).is_file() or (folder / index_name(name)).is_file()


def read_weights(folder: Path, *, allow_pickle: bool = False,
                 name: str = SAFETENSORS) -> dict[str, Tensor]:
    """The state dict of an HF folder: ``model.safetensors``, else its shards. ``name``
    names another single file (diffusers: ``diffusion_pytorch_model.safetensors``, whose
    index is ``diffusion_pytorch_model.safetensors.index.json``).

    Without either, a pickle (``pytorch_model.bin``, ...) is refused with a CheckpointError
    saying to convert it, unless ``allow_pickle`` (then it loads through
    :func:`load_torch_weights`, weights only).
    """
    folder = Path(folder)
    if (folder / name).is_file():
        return read_safetensors(folder / name)
    if (folder / index_name(name)).is_file():
        return _read_sharded(folder, name)
    pickles = [pickle_name for pickle_name in PICKLE_FILES if (folder / pickle_name).is_file()]
    if pickles and allow_pickle and pickles[0].endswith(TORCH_SUFFIXES):
        return load_torch_weights(folder / pickles[0])
    if pickles:
        raise CheckpointError(
            f"{folder} holds only {pickles[0]} (a pickle); mmcore reads safetensors only, as "
            "pickles can run code when loaded: convert it to safetensors first (e.g. "
            "save_pretrained(folder, safe_serialization=True))")
    raise CheckpointError(f"{folder} has no {name} (nor {index_name(name)})")


def _unsafe_reason(exc: BaseException) -> str:
    """The 'Unsupported global: ...' part of torch's weights_only error, if it has one."""
    found = re.search(r"Unsupported global: ([^\n]+)", str(exc))
    return f" ({found.group(1).strip()})" if found else ""


def check_archive(path: Path) -> None:
    """Refuse a ``torch.save`` zip archive whose members declare more bytes than the file
    could hold (a zip bomb): ``torch.save`` stores members uncompressed, so their sizes
    add up to about the file's size."""
    if not zipfile.is_zipfile(path):
        return
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable torch.save file: {exc}") from None
    packed = [m.filename for m in members if m.compress_type != zipfile.ZIP_STORED]
    declared = sum(m.file_size for m in members)
    if packed or declared > size + (1 << 20):
        what = (f"compressed members ({', '.join(packed[:3])})" if packed else
                f"members declaring {declared:,} bytes in a {size:,}-byte file")
        raise CheckpointError(f"{path} has {what}; torch.save writes neither, so mmcore "
                              "refuses it unread (a zip bomb?)")


def _torch_load(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` with its failures as CheckpointErrors."""
    check_archive(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} needs unsafe loading: it pickles objects other than tensors and plain "
            f"containers{_unsafe_reason(exc)}. mmcore loads .pt files only with "
            "torch.load(weights_only=True), because unpickling can run code; convert its "
            "state_dict to safetensors with a trusted tool first") from None
    except RuntimeError as exc:
        if "TorchScript" in str(exc):
            raise CheckpointError(
                f"{path} is a TorchScript archive (like OpenAI's original CLIP downloads); "
                "loading it runs code, so mmcore refuses it. Use a safetensors or "
                "state-dict .pt version of the weights") from None
        raise CheckpointError(f"{path} could not be loaded: {exc}") from None
    except (EOFError, KeyError, ValueError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable torch.save file "
                              f"(corrupt or truncated?): {exc!r}") from None


def load_torch_weights(path: Path) -> dict[str, Tensor]:
    """The tensors of a ``torch.save`` state dict, loaded with ``weights_only=True`` only.

    Accepts a training checkpoint holding it under ``state_dict`` and strips DataParallel's
    ``module.`` prefix. Converters call this only where a format is commonly pickled (e.g.
    OpenAI CLIP ``.pt``); HF folders go through :func:`read_weights`.
    """
    if not path.is_file():
        raise CheckpointError(f"no weights file at {path}")
    obj = _torch_load(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(f"{path} holds no tensors")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def load_weights_file(path: Path) -> dict[str, Tensor]:
    """One weights file: ``.safetensors``, or (weights only) one of :data:`TORCH_SUFFIXES`."""
    if not path.is_file():
        raise CheckpointError(f"no weights file at {path}")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if path.suffix in TORCH_SUFFIXES:
        return load_torch_weights(path)
    raise CheckpointError(f"{path}: unknown weights format {path.suffix!r}; expected "
                          f".safetensors or one of {', '.join(TORCH_SUFFIXES)}")


# -- activations ------------------------------------------------------------------------

#: HF ``hidden_act`` / ``activation_function`` name -> mmcore activation name
ACTIVATIONS: dict[str, str] = {
    "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
    "quick_gelu": "quick_gelu", "relu": "relu", "silu": "silu", "swish": "silu"}
#: mmcore activation name -> the HF name an export writes
HF_ACTIVATIONS: dict[str, str] = {
    "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "quick_gelu": "quick_gelu",
    "relu": "relu", "silu": "silu"}


def activation(name: Any, key: str = "hidden_act") -> str:
    """The mmcore activation for HF's ``name``; CheckpointError naming ``key`` otherwise."""
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise CheckpointError(f"config.json {key}: activation {name!r} has no mmcore "
                              f"equivalent; supported: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def hf_activation(name: str) -> str:
    """The HF name of mmcore activation ``name``; CheckpointError when HF has none."""
    if name not in HF_ACTIVATIONS:
        raise CheckpointError(f"activation {name!r} has no Hugging Face equivalent; "
                              f"exportable: {', '.join(HF_ACTIVATIONS)}")
    return HF_ACTIVATIONS[name]


# -- key mapping ------------------------------------------------------------------------


class KeyMappingError(CheckpointError, KeyError):
    """A state dict that a :class:`KeyMap` cannot rename completely (a KeyError too, so
    ``except KeyError`` callers keep working)."""

    __str__ = Exception.__str__  # KeyError's would quote the message


def _names(keys: Iterable[str]) -> str:
    keys = list(keys)
    more = f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else ""
    return ", ".join(repr(k) for k in keys[:SHOWN]) + more


_PLACEHOLDER = re.compile(r"\{\}|\*")


def _compile(pattern: str) -> tuple[re.Pattern[str], list[str]]:
    """A rule pattern -> (anchored regex, its placeholders in order)."""
    holes = _PLACEHOLDER.findall(pattern)
    if holes.count("*") > 1:
        raise ValueError(f"key pattern {pattern!r} has more than one '*'")
    parts = _PLACEHOLDER.split(pattern)
    body = "".join(re.escape(p) + ("" if i == len(holes) else
                                   (r"(\d+)" if holes[i] == "{}" else "(.+)"))
                   for i, p in enumerate(parts))
    return re.compile(f"^{body}$"), holes


def _fill(template: str, values: tuple[str, ...]) -> str:
    pieces = iter(values)
    return _PLACEHOLDER.sub(lambda _: next(pieces), template)


class KeyMap:
    """Ordered rename rules from one checkpoint's keys to another's.

    A rule is ``(pattern, replacement)``: ``{}`` matches a layer index (digits) and ``*``
    any non-empty rest; the replacement uses the same placeholders in the same order, e.g.
    ``("vision_model.encoder.layers.{}.self_attn.*", "encoders.image.blocks.{}.attn.*")``.
    The first matching rule wins. ``ignore`` patterns name keys to drop on purpose (such
    as recomputed buffers); every other key must match a rule. ``target`` names the
    target format in errors ("no mmcore equivalent for ...").
    """

    def __init__(self, rules: Mapping[str, str] | Iterable[tuple[str, str]],
                 ignore: Iterable[str] = (), target: str = "mmcore") -> None:
        pairs = list(rules.items() if isinstance(rules, Mapping) else rules)
        self.rules = pairs
        self.ignore = list(ignore)
        self.target_name = target
        self._compiled = []
        for source, target in pairs:
            regex, holes = _compile(source)
            if _PLACEHOLDER.findall(target) != holes:
                raise ValueError(f"key rule {source!r} -> {target!r}: the replacement must "
                                 "use the pattern's placeholders in the same order")
            self._compiled.append((regex, target))
        self._ignored = [_compile(p)[0] for p in self.ignore]

    def target(self, key: str) -> str | None:
        """The renamed ``key``; None for an ignored key; KeyMappingError when no rule fits."""
        known, target = self._lookup(key)
        if not known:
            raise KeyMappingError(f"no {self.target_name} equivalent for key {key!r}")
        return target

    def _lookup(self, key: str) -> tuple[bool, str | None]:
        """(whether a rule or ignore pattern matches, the renamed key or None)."""
        for regex, template in self._compiled:
            match = regex.match(key)
            if match is not None:
                return True, _fill(template, match.groups())
        return any(regex.match(key) for regex in self._ignored), None

    def apply(self, state: Mapping[str, Tensor], *, source: str = "checkpoint",
              expected: Iterable[str] | None = None) -> dict[str, Tensor]:
        """``state`` renamed (tensors shared, not copied).

        KeyMappingError naming, all at once: the source keys no rule maps, two keys mapped
        onto one, and with ``expected`` (the target model's keys) the expected keys missing
        from the result and the results it does not expect.
        """
        out: dict[str, Tensor] = {}
        unmapped, clashes = [], []
        for key, value in state.items():
            known, target = self._lookup(key)
            if not known:
                unmapped.append(key)
            elif target is not None:
                if target in out:
                    clashes.append(target)
                out[target] = value
        problems = []
        if unmapped:
            problems.append(f"no {self.target_name} equivalent for {len(unmapped)} key(s): "
                            f"{_names(unmapped)}")
        if clashes:
            problems.append(f"several keys map onto {_names(clashes)}")
        if expected is not None:
            wanted = list(expected)
            missing = [k for k in wanted if k not in out]
            extra = sorted(set(out) - set(wanted))
            if missing:
                problems.append(f"missing {len(missing)} key(s): {_names(missing)}")
            if extra:
                problems.append(f"{len(extra)} unexpected key(s): {_names(extra)}")
        if problems:
            raise KeyMappingError(f"{source}: " + "; ".join(problems))
        return out

    def inverse(self, target: str = "source") -> KeyMap:
        """The map back (replacements become patterns), for exports; ``target`` names the
        format it maps to. Ignored keys are not mapped back."""
        return KeyMap([(new, old) for old, new in self.rules], target=target)

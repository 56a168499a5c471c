"""Reading foreign weight files safely: safetensors, or ``torch.load(weights_only=True)``.

A pickle that needs more than tensors and plain containers (arbitrary classes, TorchScript)
is refused with a CheckpointError saying so: unpickling it could run code, and there is no
fallback to unsafe loading.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from mmcore.errors import CheckpointError

#: pickle protocol 2+ starts with 0x80; ``torch.save`` archives are zip files ("PK")
_PICKLE_HEADS = (b"\x80", b"PK")
#: suffixes of files :func:`load_weights` reads with ``torch.load(weights_only=True)``
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def is_pickle(path: Path) -> bool:
    """Whether ``path`` starts like a pickle or a ``torch.save`` zip archive."""
    with path.open("rb") as fh:
        head = fh.read(2)
    return head[:1] == _PICKLE_HEADS[0] or head == _PICKLE_HEADS[1]


def _refuse_pickle(path: Path) -> None:
    if is_pickle(path):
        raise CheckpointError(f"{path} is a pickle (torch.save) file, not safetensors; it "
                              "cannot be read as safetensors (rename it to .pt / .bin to load "
                              "it with torch.load(weights_only=True), or convert it)")


def safetensors_keys(path: Path) -> list[str]:
    """The tensor names in a safetensors header (reads no data); [] if unreadable."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            return list(fh.keys())
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return []


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """All tensors of a safetensors file; CheckpointError for a pickle or a broken file."""
    _refuse_pickle(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file "
                              f"(corrupt or truncated?): {exc}") from None


def _unsafe_reason(exc: BaseException) -> str:
    """The 'Unsupported global: ...' part of torch's weights_only error, if it has one."""
    found = re.search(r"Unsupported global: ([^\n]+)", str(exc))
    return f" ({found.group(1).strip()})" if found else ""


def torch_load(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` with its failures as CheckpointErrors."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} needs unsafe loading: it pickles objects other than tensors and plain "
            f"containers{_unsafe_reason(exc)}. mmcore loads .pt files only with "
            "torch.load(weights_only=True), because unpickling can run code; save its "
            "state_dict as safetensors with a trusted tool first") from None
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


def _state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    """The tensors of a loaded object: a state dict, or a training checkpoint holding one
    under ``state_dict`` (DataParallel's ``module.`` prefix removed)."""
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


def load_weights(path: Path) -> dict[str, Tensor]:
    """A state dict from ``.safetensors`` or (weights only) ``.pt`` / ``.pth`` / ``.bin``."""
    if not path.is_file():
        raise CheckpointError(f"no weights file at {path}")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if path.suffix in TORCH_SUFFIXES:
        return _state_dict(torch_load(path), path)
    raise CheckpointError(f"{path}: unknown weights format {path.suffix!r}; expected "
                          f".safetensors or one of {', '.join(TORCH_SUFFIXES)}")

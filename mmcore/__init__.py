"""mmcore: compose, train and evaluate multimodal transformers from YAML specs or Python."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mmcore._version import __version__
from mmcore.errors import CheckpointError, MMCoreError, RegistryError, SpecError
from mmcore.hookspecs import hookimpl

if TYPE_CHECKING:
    from pathlib import Path

    import torch

    from mmcore.contract import FusionOutput, ModelOutput, Tokens
    from mmcore.model import MultimodalModel
    from mmcore.registry import Registry
    from mmcore.spec import ModelSpec

__all__ = [
    "CheckpointError",
    "FusionOutput",
    "MMCoreError",
    "ModelOutput",
    "RegistryError",
    "SpecError",
    "Tokens",
    "__version__",
    "build",
    "get_registry",
    "hookimpl",
    "load",
    "load_spec",
    "save",
]


_LAZY = {"Tokens": "mmcore.contract", "FusionOutput": "mmcore.contract",
         "ModelOutput": "mmcore.contract"}


def __getattr__(name: str) -> Any:
    """Tensor-contract types load on first use, so ``import mmcore`` does not import torch."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mmcore' has no attribute {name!r}")


def load_spec(source: str | Path | dict[str, Any]) -> ModelSpec:
    """A validated spec from a YAML path, a preset name or a mapping."""
    from mmcore.spec import load_spec as _load_spec

    return _load_spec(source)


def build(spec: ModelSpec | str | Path | dict[str, Any], *,
          device: str | torch.device = "cpu") -> MultimodalModel:
    """Build a model from a spec (or anything :func:`load_spec` takes)."""
    from mmcore.builder import build as _build
    from mmcore.spec import ModelSpec as _ModelSpec

    return _build(spec if isinstance(spec, _ModelSpec) else load_spec(spec), device=device)


def save(model: torch.nn.Module, path: str | Path) -> Path:
    """Atomically save a model as safetensors with its spec, plugins and kernels."""
    from mmcore.checkpoint import save as _save

    return _save(model, path)


def load(path: str | Path, *, device: str | torch.device = "cpu") -> MultimodalModel:
    """Rebuild and load a model saved with :func:`save`, or a run folder: the final model of
    a finished run, else the newest complete checkpoint of an unfinished one."""
    from mmcore.checkpoint import load as _load

    model: MultimodalModel = _load(path, device=device)
    return model


def get_registry() -> Registry:
    """The registry of every loaded plugin's components."""
    from mmcore.plugins import get_registry as _get

    return _get()

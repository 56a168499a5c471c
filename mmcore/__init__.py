"""mmcore: compose, train and evaluate multimodal transformers from YAML specs or Python."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mmcore._version import __version__
from mmcore.errors import CheckpointError, MMCoreError, RegistryError, SpecError
from mmcore.hookspecs import hookimpl

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    import torch

    from mmcore.contract import FusionOutput, ModelOutput, Tokens
    from mmcore.model import MultimodalModel
    from mmcore.pipelines import pipeline
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
    "pipeline",
    "save",
    "train",
]


_LAZY = {"Tokens": "mmcore.contract", "FusionOutput": "mmcore.contract",
         "ModelOutput": "mmcore.contract", "pipeline": "mmcore.pipelines"}


def __getattr__(name: str) -> Any:
    """Tensor-contract types and :func:`mmcore.pipelines.pipeline` load on first use, so
    ``import mmcore`` does not import torch."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mmcore' has no attribute {name!r}")


def load_spec(source: str | Path | dict[str, Any],
              overrides: Sequence[str] = ()) -> ModelSpec:
    """A validated spec from a YAML path, a preset name or a mapping; ``overrides`` are
    ``KEY=VALUE`` strings as on the command line (``"train.lr=1e-4"``)."""
    from mmcore.overrides import load_spec as _load_spec

    return _load_spec(source, overrides)


def train(spec: ModelSpec | str | Path | dict[str, Any] | None, out_dir: str | Path, *,
          init: str | Path | Mapping[str, str] | None = None, model: Any = None,
          **options: Any) -> Path:
    """Train into the run folder ``out_dir``; returns the final model file.

    ``spec``: anything :func:`load_spec` takes (None: ``model.spec``). ``init``: weights
    to start from, for the whole model (an mmcore checkpoint or run folder, or anything
    ``mmcore import`` reads) or per component path (``{"modalities.image": "runs/clip"}``).
    ``model``: a model already built or loaded, trained instead of a fresh build.
    ``options``: those of :func:`mmcore.training.train` (steps, resume, device, ...)."""
    from mmcore.spec import ModelSpec as _ModelSpec
    from mmcore.training import train as _train

    if spec is None:
        if model is None or getattr(model, "spec", None) is None:
            raise ValueError("train needs a spec, or a model that carries one")
        spec = model.spec
    resolved = spec if isinstance(spec, _ModelSpec) else load_spec(spec)
    return _train(resolved, out_dir, init=init, model=model, **options)


def build(spec: ModelSpec | str | Path | dict[str, Any], *,
          device: str | torch.device = "cpu") -> MultimodalModel:
    """Build a model from a spec (or anything :func:`load_spec` takes), in eval mode
    (training switches to train mode itself)."""
    from mmcore.builder import build as _build
    from mmcore.spec import ModelSpec as _ModelSpec

    model = _build(spec if isinstance(spec, _ModelSpec) else load_spec(spec), device=device)
    model.eval()
    return model


def save(model: torch.nn.Module, path: str | Path) -> Path:
    """Atomically save a model as safetensors with its spec, plugins and kernels."""
    from mmcore.checkpoint import save as _save

    return _save(model, path)


def load(path: str | Path, *, device: str | torch.device = "cpu") -> MultimodalModel:
    """Rebuild and load a model saved with :func:`save`, or a run folder: the final model of
    a finished run, else the newest complete checkpoint of an unfinished one; or a hub
    name ``hf://ORG/NAME[@REVISION]`` (:mod:`mmcore.hub`). In eval mode."""
    from mmcore.checkpoint import load as _load
    from mmcore.convert import load_hub as _load_hub
    from mmcore.hub import is_hub_name

    model: MultimodalModel = (_load_hub(str(path), device=device) if is_hub_name(path)
                              else _load(path, device=device))
    model.eval()
    return model


def get_registry() -> Registry:
    """The registry of every loaded plugin's components."""
    from mmcore.plugins import get_registry as _get

    return _get()

"""Import other libraries' checkpoints as ordinary mmcore models, and export them back.

Converters are registered by plugins (``register_converters``); each turns a source (a
folder or file on disk) into an mmcore spec plus a state dict, so the imported model is
the same composition a YAML spec builds — not a wrapper around another library.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from mmcore.errors import CheckpointError, RegistryError

if TYPE_CHECKING:
    from torch import Tensor

    from mmcore.model import MultimodalModel
    from mmcore.registry import Registry


@runtime_checkable
class Converter(Protocol):
    """One foreign checkpoint format."""

    def detect(self, source: Path) -> bool:
        """Whether ``source`` looks like this format (cheap: file names, config keys)."""
        ...

    def to_mmcore(self, source: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """(spec mapping, mmcore state dict). Raises CheckpointError naming what is wrong."""
        ...


def _registry(registry: Registry | None) -> Registry:
    from mmcore.plugins import get_registry

    return registry or get_registry()


def find_converter(source: str | Path, fmt: str | None = None,
                   registry: Registry | None = None) -> tuple[str, Converter]:
    """The converter named ``fmt``, or the one that detects ``source`` (a path, or a hub
    name ``hf://ORG/NAME[@REVISION]``)."""
    from mmcore.hub import resolve

    reg = _registry(registry)
    path = resolve(source)  # a hub name (hf://ORG/NAME) -> its cached snapshot folder
    if not path.exists():
        raise CheckpointError(f"nothing to import at {path}")
    if fmt is not None:
        return fmt, reg.get("converter", fmt).factory()
    for entry in reg.list("converter"):
        conv = entry.factory()
        if conv.detect(path):
            return entry.name, conv
    names = ", ".join(reg.names("converter")) or "none registered"
    raise CheckpointError(f"no converter recognises {path}; formats: {names} "
                          "(name one with --format)")


def import_model(source: str | Path, fmt: str | None = None, *, device: str = "cpu",
                 registry: Registry | None = None) -> MultimodalModel:
    """Build the mmcore model for a foreign checkpoint and load its weights (checked)."""
    from mmcore.builder import build
    from mmcore.checkpoint import check_state
    from mmcore.hub import resolve
    from mmcore.spec import load_spec

    reg = _registry(registry)
    source = resolve(source)  # a hub name -> its cached snapshot folder
    name, conv = find_converter(source, fmt, reg)
    spec_data, tensors = conv.to_mmcore(source)
    model = build(load_spec(spec_data, reg), registry=reg, device=device)
    check_state(model, tensors, f"{source} (converted by {name})")
    model.load_state_dict(tensors, strict=True)
    return model


#: ``export_model``'s own format: an mmcore checkpoint (safetensors with the spec)
MMCORE_FORMAT = "mmcore"


def export_model(model: MultimodalModel, out: str | Path, fmt: str,
                 registry: Registry | None = None, *, merge_lora: bool = False) -> Path:
    """Write ``model`` in a foreign format through converter ``fmt``'s ``from_mmcore``, or
    as an mmcore checkpoint (``fmt="mmcore"``: ``out`` is the file, or a folder that gets
    ``model.safetensors``). ``merge_lora`` folds LoRA adapters into the base weights first
    (on a copy; ``model`` is left adapted): the export is a plain model."""
    if merge_lora:
        model = merged_copy(model)
    out = Path(out)
    if fmt == MMCORE_FORMAT:
        from mmcore.checkpoint import MODEL_FILE, save

        return save(model, out / MODEL_FILE if out.is_dir() or not out.suffix else out)
    conv = _registry(registry).get("converter", fmt).factory()
    exporter = getattr(conv, "from_mmcore", None)
    if exporter is None:
        raise RegistryError(f"converter {fmt!r} can import but not export")
    exporter(model, out)
    return out


def merged_copy(model: MultimodalModel) -> MultimodalModel:
    """A copy of ``model`` with its LoRA adapters folded in (:func:`mmcore.lora.merge`);
    an error when it has none."""
    import copy

    from mmcore import lora

    if not any(isinstance(m, lora.LoraLinear) for m in model.modules()):
        raise CheckpointError("--merge-lora: this model has no LoRA adapters to merge")
    merged: MultimodalModel = lora.merge(copy.deepcopy(model))
    return merged


def load_hub(source: str, *, device: Any = "cpu") -> Any:
    """The model a hub name holds: an mmcore checkpoint as saved, else imported by the
    converter that recognises the folder."""
    from mmcore.checkpoint import MODEL_FILE
    from mmcore.checkpoint import load as load_checkpoint
    from mmcore.hub import resolve

    folder = resolve(source)
    if (folder / MODEL_FILE).is_file() and not (folder / "config.json").is_file():
        return load_checkpoint(folder, device=device)
    return import_model(folder, device=device)

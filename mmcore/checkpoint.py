"""Model checkpoints: safetensors only, written atomically, verified before anything loads.

Metadata (all strings, as safetensors requires): ``format``, ``mmcore_version``, ``spec``
(JSON), ``plugins`` (JSON name -> version), ``kernels`` (JSON op -> choice), ``assets``
(JSON: the tokenizer files the spec names, embedded; see :mod:`mmcore.assets` and
:func:`model_assets`) and, for a model whose training started from other weights,
``init`` (JSON: each source's path, format, the sha256 of its files and the components it
gave; see mmcore.training.init).

The run-folder layout lives here too, so every loader reads a run the same way::

    RUN/model.safetensors                    the final model of a finished run
    RUN/checkpoints/step-000200/COMPLETE     a complete checkpoint (written last)
    RUN/checkpoints/step-000200/model.safetensors  optimizer.safetensors  state.json

:func:`resolve_model_file` maps a file, a checkpoint folder or a run folder (finished or
not) to the one model file to load.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from mmcore.assets import model_assets as model_assets  # an exporter's way to the files
from mmcore.errors import CheckpointError

FORMAT = "mmcore/1"
MODEL_FILE = "model.safetensors"
CHECKPOINTS = "checkpoints"
COMPLETE = "COMPLETE"
_STEP_DIR = re.compile(r"step-(\d+)")
#: the model attribute holding where its initial weights came from, and its metadata key
INIT_ATTR, INIT_KEY = "init_provenance", "init"


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """Atomically write UTF-8 ``text`` to ``path``."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk, where the OS allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- the run-folder layout --------------------------------------------------------------


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    """The folder of the checkpoint at ``step``: ``RUN/checkpoints/step-NNNNNN``."""
    return Path(run_dir) / CHECKPOINTS / f"step-{step:06d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first; half-written ones are skipped."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _STEP_DIR.fullmatch(p.name)) and (p / COMPLETE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    done = list_checkpoints(run_dir)
    return done[-1] if done else None


def resolve_model_file(path: str | Path) -> Path:
    """The model file ``path`` stands for: a file as is; a folder's ``model.safetensors``
    (a saved model, a checkpoint folder or a finished run); else the newest complete
    checkpoint's model of an unfinished run. CheckpointError when there is none."""
    path = Path(path)
    if not path.is_dir():
        if not path.is_file():
            raise CheckpointError(f"no checkpoint at {path}")
        return path
    if (path / MODEL_FILE).is_file():
        return path / MODEL_FILE
    newest = latest_checkpoint(path)
    if newest is not None:
        return newest / MODEL_FILE
    raise CheckpointError(f"{path} holds no model: looked for {MODEL_FILE} and for a complete "
                          f"checkpoint {CHECKPOINTS}/step-N/ (with a {COMPLETE} marker)")


def _plugin_versions() -> dict[str, str]:
    from mmcore.plugins import plugin_infos

    return {p.name: p.version for p in plugin_infos() if p.status == "loaded"}


def save_tensors(tensors: Mapping[str, Tensor], path: str | Path,
                 metadata: Mapping[str, str] | None = None) -> Path:
    """Atomically write named tensors (made contiguous, on CPU) to a safetensors file."""
    path = Path(path)
    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    # None, not {}: safetensors 0.8 writes an unreadable header for no tensors + {} metadata
    meta = dict(metadata) if metadata else None
    atomic_write(path, lambda tmp: save_file(data, tmp, metadata=meta))
    return path


def save(model: nn.Module, path: str | Path, extra: Mapping[str, str] | None = None, *,
         tensors: Mapping[str, Tensor] | None = None) -> Path:
    """Save ``model`` (a MultimodalModel) with its spec, plugin versions and kernel choices,
    and the files its spec names (tokenizers; :mod:`mmcore.assets`) embedded, so the
    checkpoint does not depend on the folder it was imported from.

    ``tensors`` replaces ``model.state_dict()``, e.g. the gathered whole tensors of a model
    whose parameters are sharded across ranks (FSDP)."""
    from mmcore._version import __version__
    from mmcore.assets import ASSETS_KEY, embed

    spec = getattr(model, "spec", None)
    spec_data = spec.to_dict() if spec is not None else None
    assets = embed(spec, spec_data) if spec_data is not None else None
    meta = {
        "format": FORMAT,
        "mmcore_version": __version__,
        "spec": json.dumps(spec_data),
        "plugins": json.dumps(_plugin_versions()),
        "kernels": json.dumps(getattr(model, "kernel_choices", {})),
        **dict(extra or {}),
    }
    if assets is not None:
        meta[ASSETS_KEY] = assets
    init = getattr(model, INIT_ATTR, None)
    if init:
        meta[INIT_KEY] = json.dumps(init)
    return save_tensors(model.state_dict() if tensors is None else tensors, path, meta)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a checkpoint, or CheckpointError naming what is wrong with the file."""
    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file "
                              f"(corrupt or truncated?): {exc}") from None


def read_tensors(path: str | Path) -> dict[str, Tensor]:
    """All tensors of a safetensors file; CheckpointError if it is corrupt or truncated."""
    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} could not be read (corrupt or truncated?): {exc}") from None


def _existing(path: str | Path) -> Path:
    path = resolve_model_file(path)
    with path.open("rb") as fh:
        head = fh.read(9)  # safetensors: u64 header length, then the JSON header's "{"
    if head[8:9] != b"{" and (head[:1] == b"\x80" or head[:2] == b"PK"):
        raise CheckpointError(f"{path} looks like a pickle/torch.save file; mmcore reads "
                              "safetensors only (pickles can run code when loaded)")
    return path


def check_state(model: nn.Module, tensors: Mapping[str, Tensor], source: str) -> None:
    """Raise CheckpointError listing missing, unexpected and mis-shaped tensors."""
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    shapes = [f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(tensors)) if tensors[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s), e.g. {', '.join(missing[:5])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s), e.g. {', '.join(unexpected[:5])}")
    if shapes:
        problems.append("shape mismatch: " + "; ".join(shapes[:5]))
    kinds = [f"{k}: checkpoint {tensors[k].dtype} vs model {own[k].dtype}"
             for k in sorted(set(own) & set(tensors)) if _kind(tensors[k]) != _kind(own[k])]
    if kinds:
        problems.append("dtype mismatch: " + "; ".join(kinds[:5]))
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        problems.append(f"non-finite values in {', '.join(bad[:5])}")
    if problems:
        raise CheckpointError(f"{source} does not fit this model: " + "; ".join(problems))


def _kind(tensor: Tensor) -> str:
    """What a tensor holds: floats cast to each other on load (a bf16 import into an fp32
    model is fine), but integers or booleans where floats belong are not weights."""
    if tensor.dtype == torch.bool:
        return "bool"
    if tensor.is_complex():
        return "complex"
    return "float" if tensor.is_floating_point() else "int"


def load_state(model: nn.Module, path: str | Path) -> nn.Module:
    """Load weights into ``model`` after checking all of them; on any error the model is
    left untouched. A file that references a base (a LoRA run's adapters) gets the base's
    tensors too (:func:`with_base`)."""
    tensors = with_base(path, read_tensors(path))
    check_state(model, tensors, str(path))
    model.load_state_dict(tensors, strict=True)
    return model


def metadata_json(meta: Mapping[str, str], key: str, path: Path) -> Any:
    """A JSON value of a checkpoint's metadata (None when absent); bad JSON is a
    CheckpointError naming the file and the key."""
    text = meta.get(key)
    if text is None or text == "":
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: metadata {key!r} is not valid JSON ({exc.msg} at "
                              f"character {exc.pos})") from None


def stored_elements(path: Path) -> int:
    """How many values the tensors of a safetensors file hold (plus those of the base it
    references), from the headers alone: nothing is read or allocated."""
    total = 0
    try:
        with safe_open(str(path), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 - not a dict
                shape = fh.get_slice(key).get_shape()
                total += math.prod(shape)
            base = (fh.metadata() or {}).get(BASE_KEY)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} could not be read (corrupt or truncated?): {exc}") \
            from None
    if base:
        reference = metadata_json({BASE_KEY: base}, BASE_KEY, path)
        if isinstance(reference, dict) and isinstance(reference.get("path"), str):
            base_file = path.parent / reference["path"]
            if base_file.is_file():
                total += stored_elements(base_file)
    return total


def check_stored_size(spec: Any, path: Path) -> None:
    """Refuse, before building anything, a checkpoint whose spec describes far more
    parameters than its file holds (lying metadata would otherwise allocate the model)."""
    from mmcore.analysis import analyse

    try:
        described = analyse(spec).parameters
    except (ValueError, TypeError, ArithmeticError):
        return
    stored = stored_elements(path)
    if described > 2 * stored + 1_000_000:
        raise CheckpointError(f"{path}: its spec describes {described:,} parameters but the "
                              f"file holds {stored:,} values; the metadata does not match the "
                              "weights, so nothing was built")


def load(path: str | Path, *, device: str | torch.device = "cpu") -> Any:
    """Rebuild the model saved at ``path`` from its own spec and load its weights.

    ``path`` is a model file, a checkpoint folder or a run folder: a finished run's final
    model, else an unfinished run's newest complete checkpoint (:func:`resolve_model_file`).
    Kernels are selected again for the hardware here; the saved choice is honoured only
    if the spec forced it.
    """
    from mmcore.assets import restore
    from mmcore.builder import build
    from mmcore.spec import load_spec

    path = resolve_model_file(path)
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an mmcore checkpoint (format "
                              f"{meta.get('format')!r}, expected {FORMAT!r})")
    spec_data = metadata_json(meta, "spec", path)
    if spec_data is None:
        raise CheckpointError(f"{path} holds no spec; load it into a built model with load_state")
    if not isinstance(spec_data, dict):
        raise CheckpointError(f"{path}: metadata 'spec' must be a JSON object (a spec), got "
                              f"{type(spec_data).__name__}")
    spec = load_spec(restore(spec_data, meta, path))
    check_stored_size(spec, path)
    model = build(spec, device=device)
    if spec.train.lora is not None:  # an adapted model: adapters first, then its weights
        from mmcore import lora

        lora.apply(model, spec.train.lora)
    return load_state(model, path)


# --- a base referenced by path and sha256 (LoRA adapters) -------------------------------

#: metadata key of a file holding part of a model (LoRA adapters): JSON ``{"path":
#: relative to the file's folder, "absolute": path, "sha256": of the base file}``
BASE_KEY = "base"


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file, as hex."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def base_reference(base: Path, folder: Path) -> dict[str, str]:
    """How a file in ``folder`` names ``base``: relative path, absolute path, sha256."""
    return {"path": os.path.relpath(base.resolve(), folder.resolve()),
            "absolute": str(base.resolve()), "sha256": file_sha256(base)}


def with_base(path: str | Path, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """``tensors`` plus those of the base its metadata references (found by relative,
    then absolute path, and checked against its sha256); ``tensors`` as is otherwise."""
    path = resolve_model_file(path)
    raw = read_metadata(path).get(BASE_KEY)
    if not raw:
        return tensors
    ref = json.loads(raw)
    candidates = [path.parent / ref["path"], Path(ref["absolute"])]
    base = next((p for p in candidates if p.is_file()), None)
    if base is None:
        raise CheckpointError(f"{path} holds adapters for a base that is gone: looked for "
                              f"{candidates[0]} and {candidates[1]}")
    if file_sha256(base) != ref["sha256"]:
        raise CheckpointError(f"{path} references base {base}, whose sha256 no longer "
                              f"matches ({ref['sha256'][:12]}...): it was changed")
    return {**read_tensors(base), **tensors}


# --- loading by component path ----------------------------------------------------------


def component_keys(model: nn.Module, path: str) -> list[str]:
    """The state-dict keys of the modules at a component path (``modalities.image``,
    ``fusion``, ``heads.cls``, ...; see ``MultimodalModel.modules_at``)."""
    names = {id(m): n for n, m in model.named_modules()}
    prefixes = tuple(f"{names[id(m)]}." for m in model.modules_at(path))  # type: ignore[operator]
    return [k for k in model.state_dict() if k.startswith(prefixes)] if prefixes else []


def load_components(model: nn.Module, tensors: Mapping[str, Tensor], paths: list[str],
                    source: str, *, required: bool) -> tuple[list[str], list[str]]:
    """Copy the tensors of each component path from ``tensors`` into ``model``; ->
    (paths loaded, paths the source does not cover: left as they are).

    A component counts only whole: some of its tensors missing, a shape mismatch (named
    with both shapes) or non-finite values is a CheckpointError listing every problem, and
    nothing is loaded. ``required``: a path the source does not cover is an error too."""
    loaded: list[str] = []
    fresh: list[str] = []
    problems: list[str] = []
    own = model.state_dict()
    for path in paths:
        keys = component_keys(model, path)
        present = [k for k in keys if k in tensors]
        if not keys:
            continue  # holds no parameters or buffers
        if not present and not required:
            fresh.append(path)
            continue
        problems += _component_problems(path, keys, own, tensors)
        loaded.append(path)
    if problems:
        raise CheckpointError(f"{source} does not fit this model: " + "; ".join(problems[:8]))
    subset = {k: tensors[k] for p in loaded for k in component_keys(model, p)}
    model.load_state_dict(subset, strict=False)
    return loaded, fresh


def _component_problems(path: str, keys: list[str], own: Mapping[str, Tensor],
                        tensors: Mapping[str, Tensor]) -> list[str]:
    """What stops component ``path`` loading from ``tensors``."""
    missing = [k for k in keys if k not in tensors]
    if missing:
        return [f"{path}: the source lacks {len(missing)} of its {len(keys)} tensor(s), "
                f"e.g. {', '.join(missing[:3])}"]
    out = [f"shape mismatch {k}: source {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}"
           for k in keys if tensors[k].shape != own[k].shape]
    bad = [k for k in keys
           if tensors[k].is_floating_point() and not torch.isfinite(tensors[k]).all()]
    return out + ([f"non-finite values in {', '.join(bad[:3])}"] if bad else [])

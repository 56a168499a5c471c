"""Start a training run from existing weights: the spec's ``init:`` (or ``--init``).

A source is an mmcore checkpoint (file, checkpoint folder or run folder: its newest
complete checkpoint) or anything ``mmcore import`` reads (a Hugging Face CLIP / Whisper /
CLAP folder, OpenAI CLIP weights), converted in memory. Weights load by component path:

- ``init: SOURCE`` - every component the source covers; those it does not cover stay
  freshly initialised and are named in one warning; a source covering nothing is refused;
- ``init: {modalities.image: SOURCE, ...}`` - just those components, which the source must
  cover.

A component loads whole or not at all (a missing tensor or a shape mismatch is an error
naming the tensor and both shapes). Every source is read and checked before the run folder
is touched. The model remembers where its weights came from (path, format, sha256 of the
source's files), and :func:`mmcore.checkpoint.save` writes that into the ``init`` metadata.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from mmcore.checkpoint import (
    FORMAT,
    INIT_ATTR,
    INIT_KEY,
    MODEL_FILE,
    list_checkpoints,
    load_components,
    read_metadata,
    read_tensors,
    resolve_model_file,
)
from mmcore.errors import CheckpointError, SpecError, SpecIssue
from mmcore.spec import ModelSpec, init_issues

#: what a whole-model ``init`` is written as, among component paths
WHOLE = "*"
_CHUNK = 1 << 20
#: ``PATH`` of ``--init PATH=SOURCE``: a dotted component path
_COMPONENT = re.compile(r"(?:modalities|fusion|heads|objectives)(?:\.[\w-]+)*")


@dataclass
class InitSource:
    """One source's weights, read and converted to mmcore keys, with its provenance."""

    source: str
    fmt: str  # "mmcore" or the converter's name
    files: dict[str, str]  # file path -> sha256
    tensors: dict[str, Tensor] = field(repr=False)

    def provenance(self, components: Sequence[str]) -> dict[str, Any]:
        return {"source": self.source, "format": self.fmt, "sha256": self.files,
                "components": list(components)}


def init_plan(init: str | Mapping[str, str] | None) -> dict[str, str]:
    """``init:`` as component path -> source; the whole model is :data:`WHOLE`."""
    if init is None:
        return {}
    if isinstance(init, str):
        return {WHOLE: init}
    return dict(init)


def with_init(spec: ModelSpec, init: str | Path | Mapping[str, str] | Sequence[str] | None
              ) -> ModelSpec:
    """``spec`` with its ``init`` replaced: a source for the whole model, a mapping of
    component path -> source, or ``--init`` flags (``SOURCE`` or ``PATH=SOURCE``)."""
    if init is None:
        return spec
    if isinstance(init, str | Path):
        value: str | dict[str, str] = str(init)
    elif isinstance(init, Mapping):
        value = {str(k): str(v) for k, v in init.items()}
    else:
        value = parse_init_flags(init)
    updated = spec.model_copy(update={"init": value})
    issues = init_issues(updated)
    if issues:
        raise SpecError(issues, spec.name)
    return updated


def parse_init_flags(flags: Sequence[str]) -> str | dict[str, str]:
    """``--init SOURCE`` (the whole model) or ``--init PATH=SOURCE`` (one component path),
    repeatable for different paths; not both forms at once."""
    whole: list[str] = []
    parts: dict[str, str] = {}
    for flag in flags:
        path, sep, source = flag.partition("=")
        if sep and _COMPONENT.fullmatch(path) and not Path(flag).exists():
            parts[path] = source  # checked against the spec's paths by init_issues
        else:
            whole.append(flag)
    if len(whole) > 1 or (whole and parts):
        raise SpecError([SpecIssue("init", "give one --init SOURCE for the whole model, or "
                                           "--init PATH=SOURCE per component, not both")])
    return whole[0] if whole else parts


# --- reading sources -------------------------------------------------------------------


def read_source(source: str | Path) -> InitSource:
    """Read one source's tensors (mmcore keys). CheckpointError naming the file when it
    is missing, corrupt, a pickle, or nothing mmcore reads."""
    path = Path(source)
    if not path.exists():
        raise CheckpointError(f"init source {source} does not exist")
    own = _mmcore_file(path)
    if own is not None:
        return InitSource(str(source), "mmcore", {str(own): sha256(own)}, read_tensors(own))
    return _converted(path)


def _mmcore_file(path: Path) -> Path | None:
    """The mmcore model file ``path`` stands for, or None when it is another format."""
    if path.is_dir() and not (path / MODEL_FILE).is_file() and not list_checkpoints(path):
        return None
    if path.is_file() and path.suffix != ".safetensors":
        return None
    file = resolve_model_file(path)
    if read_metadata(file).get("format") == FORMAT:  # CheckpointError when corrupt
        return file
    if path.is_file() and not _detected(path):
        return file  # a plain safetensors state dict with mmcore keys
    return None


def _detected(path: Path) -> bool:
    from mmcore.convert import find_converter

    try:
        find_converter(path)
    except CheckpointError:
        return False
    return True


def _converted(path: Path) -> InitSource:
    from mmcore.convert import find_converter
    from mmcore.convert.hf import is_pickle

    if path.is_file() and is_pickle(path) and not _detected(path):
        raise CheckpointError(f"init source {path} is a pickle (torch.save) file; mmcore reads "
                              "safetensors only, as unpickling can run code: convert it first")
    try:
        fmt, converter = find_converter(path)
    except CheckpointError:
        raise CheckpointError(f"init source {path} is neither an mmcore checkpoint nor a "
                              "format mmcore import reads (mmcore list converter)") from None
    _, tensors = converter.to_mmcore(path)
    return InitSource(str(path), fmt, _hashes(path), dict(tensors))


def _hashes(path: Path) -> dict[str, str]:
    files = [path] if path.is_file() else sorted(
        p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    return {str(p): sha256(p) for p in files}


def sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# --- applying ------------------------------------------------------------------------------


def read_sources(spec: ModelSpec) -> dict[str, InitSource]:
    """Read every source ``spec.init`` names (each file once): component path -> source."""
    cache: dict[str, InitSource] = {}
    plan = init_plan(spec.init)
    for source in dict.fromkeys(plan.values()):
        cache[source] = read_source(source)
    return {path: cache[source] for path, source in plan.items()}


def leaf_paths(spec: ModelSpec) -> list[str]:
    """The finest component paths: each modality's tokenizer and encoder, the fusion,
    each head and objective."""
    return [p for p in spec.module_paths()
            if p.count(".") == 2 or p == "fusion" or p.startswith(("heads.", "objectives."))]


def apply_init(model: Any, spec: ModelSpec, sources: Mapping[str, InitSource],
               *, announce: bool = True) -> list[dict[str, Any]]:
    """Load ``sources`` (from :func:`read_sources`) into ``model`` by component path: the
    whole-model source first, then each component's. -> the provenance records, also set
    on the model for :func:`mmcore.checkpoint.save`. ``announce``: warn, in one line, of
    the components no source covered."""
    records: list[dict[str, Any]] = []
    fresh: list[str] = []
    if WHOLE in sources:
        source = sources[WHOLE]
        loaded, fresh = load_components(model, source.tensors, leaf_paths(spec), source.source,
                                        required=False)
        if not loaded:
            raise CheckpointError(f"init source {source.source} shares no component with this "
                                  "model (a checkpoint of another architecture?)")
        records.append(source.provenance(loaded))
    for path, source in sources.items():
        if path != WHOLE:
            loaded, _ = load_components(model, source.tensors, [path], source.source,
                                        required=True)
            records.append(source.provenance(loaded))
    covered = [p for p in sources if p != WHOLE]
    fresh = [p for p in fresh if not any(p == c or p.startswith(c + ".") for c in covered)]
    if fresh and announce:
        warnings.warn(f"init: freshly initialised (not in {sources[WHOLE].source}): "
                      f"{', '.join(fresh)}", stacklevel=2)
    setattr(model, INIT_ATTR, records)
    return records


def saved_provenance(path: Path) -> list[dict[str, Any]] | None:
    """The ``init`` records a checkpoint file holds, if any."""
    text = read_metadata(path).get(INIT_KEY)
    return json.loads(text) if text else None

"""Model summaries for ``mmcore inspect``: parameters per component and tokens per modality.

Everything here works on a model built on the meta device, so summarising CLIP ViT-B/32
(151M parameters) allocates no parameter memory.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mmcore.contract import Tokens

if TYPE_CHECKING:
    from mmcore.model import MultimodalModel
    from mmcore.registry import Registry
    from mmcore.spec import ModelSpec


@dataclass(frozen=True)
class ComponentSummary:
    """One built component: its spec key path, kind, registered type and parameter counts."""

    path: str
    kind: str
    type: str
    parameters: int
    trainable: int


@dataclass
class ModelSummary:
    """What ``mmcore inspect`` reports about a model."""

    name: str
    description: str
    components: list[ComponentSummary]
    parameters: int
    trainable: int
    #: modality -> tokens entering the fusion (None where it could not be worked out)
    tokens: dict[str, int | None] = field(default_factory=dict)
    kernels: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts of ``module``; shared tensors count once."""
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def _module_at(model: MultimodalModel, path: str) -> nn.Module | None:
    """The built module for a spec key path such as ``modalities.image.encoder``; None for
    preprocessors and data, which hold no parameters."""
    parts = path.split(".")
    if parts[0] == "fusion":
        found: Any = model.fusion
    elif parts[0] == "modalities":  # modalities.<name>.<tokenizer|encoder|preprocessor>
        found = dict(getattr(model, parts[2] + "s").items()).get(parts[1])
    elif parts[0] in ("heads", "objectives"):
        found = dict(getattr(model, parts[0]).items()).get(parts[1])
    else:
        found = None
    return found if isinstance(found, nn.Module) else None


def component_summaries(model: MultimodalModel, spec: ModelSpec) -> list[ComponentSummary]:
    """Parameter counts of every module the spec names, in spec order."""
    rows = []
    for path, kind, ref in spec.components():
        module = _module_at(model, path)
        if module is not None:
            total, trainable = count_parameters(module)
            rows.append(ComponentSummary(path, kind, ref.type, total, trainable))
    return rows


def _to(value: Any, device: torch.device | str) -> Any:
    """Move tensors (also inside a mapping or Tokens) to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, Tokens):
        return Tokens(_to(value.x, device), _to(value.mask, device))
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def _run_tokens(model: MultimodalModel, modality: str, inputs: Any) -> int:
    """Tokens out of the tokenizer, then out of the encoder where that runs on meta too."""
    tokens = model.tokenizers[modality](inputs)
    if modality in model.encoders:
        # an encoder that needs real values is skipped: it keeps N in the usual case
        with contextlib.suppress(Exception):
            tokens = model.encoders[modality](_to(tokens, tokens.x.device))
    return int(tokens.x.shape[1])


def token_count(model: MultimodalModel, modality: str, registry: Registry) -> int | None:
    """Tokens ``modality`` hands to the fusion for its plugin's example input, or None.

    On a meta model the tokenizer (and encoder) run with the example input on the CPU,
    then on the meta device; a component that needs real values there (e.g. a range
    check) gives None.
    """
    spec = model.spec
    entry = registry.get("tokenizer", spec.modalities[modality].tokenizer.type)
    if entry.example is None:
        return None
    generator = torch.Generator().manual_seed(0)
    try:
        inputs = entry.example(model.tokenizers[modality], 1, generator)
    except Exception:  # an example factory that cannot work with meta modules
        return None
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    candidates = [inputs, _to(inputs, device)] if device.type == "meta" else [_to(inputs, device)]
    for candidate in candidates:
        try:
            return _run_tokens(model, modality, candidate)
        except Exception:  # meta tensors reject data-dependent checks such as .item()
            continue
    return None


def summarize_model(model: MultimodalModel, registry: Registry | None = None) -> ModelSummary:
    """Summary of a built model (any device; meta costs nothing)."""
    from mmcore.plugins import get_registry

    registry = registry or get_registry()
    spec = model.spec
    total, trainable = count_parameters(model)
    with torch.no_grad():
        tokens = {m: token_count(model, m, registry) for m in sorted(spec.modalities)}
    return ModelSummary(spec.name, spec.description, component_summaries(model, spec), total,
                        trainable, tokens, dict(model.kernel_choices))


def summarize(spec: ModelSpec, registry: Registry | None = None) -> ModelSummary:
    """Build ``spec`` on the meta device (full validation, no memory) and summarise it.

    Raises :class:`mmcore.SpecError` if the spec does not build.
    """
    from mmcore.builder import build

    model = build(spec, registry=registry, device="meta")
    return summarize_model(model, registry)

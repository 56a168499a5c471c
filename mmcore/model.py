"""MultimodalModel: built modules wired by the tensor contract. It parses no config."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from mmcore.contract import Batch, Fusion, FusionOutput, ModalityInput, ModelOutput, Tokens
from mmcore.kernels import KernelSet

#: spec slot of a modality's pipeline -> the model attribute holding its modules
_MODALITY_GROUPS = {"preprocessor": "preprocessors", "tokenizer": "tokenizers",
                    "encoder": "encoders"}


class MultimodalModel(nn.Module):
    """Per-modality tokenizer -> encoder, one fusion, heads and weighted objectives.

    ``forward(batch)`` runs every modality present in ``batch`` (others may be absent).
    ``preprocessors`` are plain callables kept beside the modules for data loading.
    """

    def __init__(self, *, tokenizers: Mapping[str, nn.Module], encoders: Mapping[str, nn.Module],
                 fusion: Fusion, heads: Mapping[str, nn.Module] | None = None,
                 objectives: Mapping[str, tuple[nn.Module, float]] | None = None,
                 preprocessors: Mapping[str, Any] | None = None, kernels: KernelSet | None = None,
                 spec: Any = None) -> None:
        super().__init__()
        self.tokenizers = nn.ModuleDict(dict(tokenizers))
        self.encoders = nn.ModuleDict(dict(encoders))
        self.fusion = fusion
        self.heads = nn.ModuleDict(dict(heads or {}))
        objectives = dict(objectives or {})
        self.objectives = nn.ModuleDict({k: m for k, (m, _) in objectives.items()})
        self.objective_weights = {k: w for k, (_, w) in objectives.items()}
        self.preprocessors = dict(preprocessors or {})
        self.kernels = kernels or KernelSet()
        self.spec = spec
        self.modality_dropout: dict[str, float] = dict(
            getattr(spec, "modality_dropout", None) or {})

    @property
    def modalities(self) -> list[str]:
        return sorted(self.tokenizers)

    @property
    def kernel_choices(self) -> dict[str, str]:
        return dict(self.kernels.choices)

    def modules_at(self, path: str) -> list[nn.Module]:
        """The built modules a spec key path names (see ``ModelSpec.module_paths``):
        ``modalities.<m>`` (its tokenizer and encoder), ``modalities.<m>.tokenizer|encoder``,
        ``fusion``, ``heads``, ``heads.<name>``, ``objectives``, ``objectives.<name>``.
        Preprocessors and data hold no parameters: ``[]``. Unknown paths raise KeyError."""
        head, *rest = path.split(".")
        if head == "modalities" and len(rest) in (1, 2) and rest[0] in self.tokenizers:
            slots = rest[1:] or ["tokenizer", "encoder"]
            if all(slot in _MODALITY_GROUPS for slot in slots):
                groups = [getattr(self, _MODALITY_GROUPS[slot]) for slot in slots]
                return [g[rest[0]] for g in groups
                        if isinstance(g, nn.ModuleDict) and rest[0] in g]
        elif head == "fusion" and not rest:
            return [self.fusion]
        elif head in ("heads", "objectives") and len(rest) <= 1:
            group = getattr(self, head)
            if not rest or rest[0] in group:
                return [group[rest[0]] if rest else group]
        elif path == "data":
            return []
        raise KeyError(f"no component at {path!r}")

    def preprocess(self, modality: str, items: Sequence[Any]) -> ModalityInput:
        """Raw items (images, strings, ...) -> the collated input for ``modality``."""
        if modality not in self.preprocessors:
            raise KeyError(f"model has no preprocessor for modality {modality!r}; "
                           f"it has {sorted(self.preprocessors)}")
        return self.preprocessors[modality](items)

    def preprocess_with_views(self, modality: str, items: Sequence[Any]
                              ) -> dict[str, ModalityInput]:
        """Raw items -> the collated input of ``modality`` and of every other modality that
        reads the same item key (its views: ``ModalitySpec.source``), by modality."""
        sources = self.spec.sources() if self.spec is not None else {}
        key = sources.get(modality, modality)
        views = [m for m, k in sources.items() if k == key and m != modality]
        return {m: self.preprocess(m, items) for m in (modality, *views)}

    def encode(self, batch: Batch, prepared: dict[str, Any] | None = None) -> dict[str, Tokens]:
        """Tokenize and encode each modality present in ``batch``. -> name: (B, N, D).

        With ``prepared`` (a dict to fill), objectives that define ``prepare`` rewrite the
        tokenizer outputs before the encoders and leave their state in ``prepared[name]``.
        """
        present = [m for m in self.modalities if batch.get(m) is not None]
        if not present:
            raise ValueError(f"batch has none of this model's modalities {self.modalities}; "
                             f"its keys are {sorted(batch)}")
        device = self._device()
        out = {name: self.tokenizers[name](_to_device(batch[name], device)) for name in present}
        if prepared is not None:
            out = self._prepare(batch, out, prepared)
        out = {name: self.encoders[name](t) if name in self.encoders else t
               for name, t in out.items()}
        if self.training and self.modality_dropout:
            out = self._drop_modalities(out)
        return out

    def _prepare(self, batch: Batch, tokens: dict[str, Tokens],
                 prepared: dict[str, Any]) -> dict[str, Tokens]:
        """Run each objective's optional ``prepare(batch, tokens) -> (tokens, state)``."""
        for name, objective in self.objectives.items():
            hook = getattr(objective, "prepare", None)
            if hook is not None:
                tokens, prepared[name] = hook(batch, tokens)
        return tokens

    def _drop_modalities(self, tokens: dict[str, Tokens]) -> dict[str, Tokens]:
        """Mask out whole modalities per sample with their ``modality_dropout`` probability;
        a sample never loses every modality it has."""
        names = [n for n in tokens if self.modality_dropout.get(n, 0.0) > 0]
        if not names:
            return tokens
        any_x = next(iter(tokens.values())).x
        b = any_x.shape[0]
        drop = {n: torch.rand(b, device=any_x.device) < self.modality_dropout[n] for n in names}
        kept = torch.stack([~drop[n] if n in drop else torch.ones(b, dtype=torch.bool,
                                                                  device=any_x.device)
                            for n in tokens]).any(0)  # (B,) some modality survives
        out = dict(tokens)
        for n in names:
            keep = ~drop[n] | ~kept  # undo the drop where it would remove everything
            out[n] = Tokens(tokens[n].x, tokens[n].valid() & keep[:, None])
        return out

    def forward(self, batch: Batch, prepared: dict[str, Any] | None = None) -> ModelOutput:
        fused: FusionOutput = self.fusion(self.encode(batch, prepared))
        heads = {name: head(fused) for name, head in self.heads.items()}
        return ModelOutput(tokens=fused.tokens, embeddings=fused.embeddings, heads=heads)

    def embed(self, modality: str, inputs: ModalityInput) -> Tensor:
        """The pooled embedding of one modality alone. (B, D)"""
        return self.fusion(self.encode({modality: inputs})).embeddings[modality]

    def loss(self, batch: Batch, output: ModelOutput | None = None) -> dict[str, Tensor]:
        """Weighted sum of the objectives as ``loss``, plus each objective's terms as
        ``<objective>/<name>``.

        Without ``output``, the forward pass runs the objectives' ``prepare`` hooks (in train
        and eval mode alike) and each objective reads its own state as ``output.prepared``.
        """
        if not self.objectives:
            raise ValueError("this model has no objectives; add some under 'objectives:'")
        prepared: dict[str, Any] = {}
        output = output if output is not None else self(batch, prepared=prepared)
        total: Tensor | None = None
        logs: dict[str, Tensor] = {}
        for name, objective in self.objectives.items():
            own = replace(output, prepared=prepared[name]) if name in prepared else output
            terms = objective(own, batch)
            weighted = terms["loss"] * self.objective_weights[name]
            total = weighted if total is None else total + weighted
            logs.update({f"{name}/{k}": v for k, v in terms.items()})
        assert total is not None
        return {"loss": total, **logs}

    def _device(self) -> torch.device:
        return device_of(self)


def device_of(module: nn.Module) -> torch.device:
    """Where ``module``'s parameters are (CPU for a module without any)."""
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def _to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, Tensor):
        return x.to(device)
    if isinstance(x, Mapping):
        return {k: _to_device(v, device) for k, v in x.items()}
    return x

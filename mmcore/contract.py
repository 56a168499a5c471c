"""The tensor contract every modality pipeline speaks, and the component interfaces.

A preprocessor turns raw data into tensors (data side, no grad); a tokenizer turns those
tensors into :class:`Tokens`; an encoder maps Tokens to Tokens; a fusion combines the
per-modality Tokens; heads and objectives read the :class:`ModelOutput`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

#: A collated model input for one modality: a tensor, or named tensors (e.g. ids + mask).
ModalityInput = Tensor | Mapping[str, Tensor]
#: A collated batch: modality name -> input, plus targets such as ``label``.
Batch = Mapping[str, Any]


@dataclass
class Tokens:
    """A token sequence ``x: (B, N, D)`` with validity ``mask: (B, N)`` (True = real token)."""

    x: Tensor
    mask: Tensor | None = None

    def __post_init__(self) -> None:
        if self.x.dim() != 3:
            raise ValueError(f"Tokens.x must be (B, N, D), got shape {tuple(self.x.shape)}")
        if self.mask is not None and self.mask.shape != self.x.shape[:2]:
            raise ValueError(
                f"Tokens.mask must be (B, N) = {tuple(self.x.shape[:2])}, "
                f"got {tuple(self.mask.shape)}"
            )

    @property
    def width(self) -> int:
        return int(self.x.shape[-1])

    def valid(self) -> Tensor:
        """The mask, or all-True when there is none. (B, N) bool."""
        if self.mask is None:
            return torch.ones(self.x.shape[:2], dtype=torch.bool, device=self.x.device)
        return self.mask


@dataclass
class FusionOutput:
    """What a fusion returns: token streams and pooled embeddings ``(B, D)``, by name.

    Names are modality names, or ``"fused"`` for a joint representation. ``latents``: a
    latent-array fusion's latents ``(B, M, D)`` (Perceiver), which query decoders read; None
    for other fusions.
    """

    tokens: dict[str, Tokens] = field(default_factory=dict)
    embeddings: dict[str, Tensor] = field(default_factory=dict)
    latents: Tokens | None = None


@dataclass
class ModelOutput:
    """Everything a forward pass produced; objectives and evaluation read it.

    ``prepared``: what the reading objective's own ``prepare`` hook returned for this
    forward pass (see :class:`Objective`); :meth:`MultimodalModel.loss` sets it per objective.
    """

    tokens: dict[str, Tokens]
    embeddings: dict[str, Tensor]
    heads: dict[str, Tensor] = field(default_factory=dict)
    prepared: Any = None


@runtime_checkable
class Preprocessor(Protocol):
    """Raw inputs (images, strings, waveforms) -> one collated tensor input. No grad."""

    def __call__(self, items: Sequence[Any]) -> ModalityInput: ...


class Tokenizer(torch.nn.Module):
    """Preprocessed tensors -> :class:`Tokens`. Sets ``out_width``."""

    out_width: int

    def forward(self, inputs: ModalityInput) -> Tokens:  # pragma: no cover - interface
        raise NotImplementedError


class Encoder(torch.nn.Module):
    """:class:`Tokens` -> :class:`Tokens`. Sets ``out_width``."""

    out_width: int

    def forward(self, tokens: Tokens) -> Tokens:  # pragma: no cover - interface
        raise NotImplementedError


class Fusion(torch.nn.Module):
    """Per-modality Tokens (sorted by name) -> :class:`FusionOutput`."""

    def forward(self, tokens: dict[str, Tokens]) -> FusionOutput:  # pragma: no cover
        raise NotImplementedError


class Head(torch.nn.Module):
    """:class:`FusionOutput` -> a tensor such as class logits ``(B, C)``."""

    def forward(self, fused: FusionOutput) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class Objective(torch.nn.Module):
    """(model output, batch) -> named losses and metrics; ``"loss"`` is what trains.

    An objective that must change the model's input (masked modelling) may also define
    ``prepare(batch, tokens) -> (tokens, state)``: :meth:`MultimodalModel.loss` calls it on
    the tokenizer outputs ``{modality: Tokens}`` before the encoders and hands ``state``
    back to this objective as ``output.prepared``. Plain ``model(batch)`` never calls it.
    """

    def forward(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:  # pragma: no cover
        raise NotImplementedError

"""A key/value cache for incremental decoding with causal self-attention."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class KVCache:
    """Per-layer keys and values ``(B, Hkv, S, Dh)`` of the tokens seen so far, and which of
    those ``S`` positions are real (``mask: (B, S)`` bool; left padding is False).

    A decoder appends to it in place during a forward pass; :meth:`reorder` selects batch
    rows (beam search). ``length`` is ``S``.
    """

    keys: list[Tensor] = field(default_factory=list)
    values: list[Tensor] = field(default_factory=list)
    mask: Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[1])

    def extend_mask(self, new: Tensor) -> Tensor:
        """Record ``new: (B, T)`` validity for the tokens about to be added; -> (B, S + T)."""
        self.mask = new if self.mask is None else torch.cat([self.mask, new], dim=1)
        return self.mask

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add layer ``layer``'s new ``k, v: (B, Hkv, T, Dh)``; -> all of them (B, Hkv, S, Dh)."""
        if layer == len(self.keys):
            self.keys.append(k)
            self.values.append(v)
        else:
            self.keys[layer] = torch.cat([self.keys[layer], k], dim=2)
            self.values[layer] = torch.cat([self.values[layer], v], dim=2)
        return self.keys[layer], self.values[layer]

    def reorder(self, index: Tensor) -> KVCache:
        """Keep batch rows ``index: (B',)`` (in that order), in place; returns self."""
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]
        if self.mask is not None:
            self.mask = self.mask.index_select(0, index)
        return self

    def memory_bytes(self) -> int:
        """Bytes the cached keys and values hold."""
        return sum(t.numel() * t.element_size() for t in [*self.keys, *self.values])

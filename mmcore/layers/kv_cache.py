"""A key/value cache for incremental decoding with causal self-attention.

The keys and values live in preallocated buffers ``(B, Hkv, capacity, Dh)`` that grow by
doubling, so a decoding step writes one position in place instead of copying the whole
cache (``torch.cat`` per step and layer costs O(S) each time: quadratic in the length).
With autograd recording (a cache used while training), nothing is written in place: each
append makes a new tensor, as ``torch.cat`` does, so saved tensors stay valid.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: positions a cache preallocates beyond the first call's tokens (grows by doubling)
RESERVE = 128


def _capacity(needed: int, current: int) -> int:
    """The next buffer length: at least ``needed``, at least double ``current``, plus the
    reserve on the first allocation; a multiple of 64."""
    want = max(needed + (RESERVE if current == 0 else 0), 2 * current)
    return -(-want // 64) * 64


class KVCache:
    """Per-layer keys and values ``(B, Hkv, S, Dh)`` of the tokens seen so far, which of
    those ``S`` positions are real (``mask: (B, S)`` bool; left padding is False), and each
    row's count of real tokens (the next rotary position).

    A decoder records the new tokens with :meth:`extend` (once per forward pass), then
    each layer calls :meth:`append`; :meth:`reorder` selects batch rows (beam search).
    ``length`` is ``S``; ``all_real`` says no cached position is padding (attention then
    needs no key mask).
    """

    def __init__(self) -> None:
        self._keys: list[Tensor] = []  # (B, Hkv, capacity, Dh) each
        self._values: list[Tensor] = []
        self._mask: Tensor | None = None  # (B, capacity) bool
        self._length = 0
        self._real: Tensor | None = None  # (B,) long: real tokens per row
        self.all_real = True

    @property
    def length(self) -> int:
        return self._length

    @property
    def mask(self) -> Tensor | None:
        """Which cached positions are real tokens. (B, S) bool, or None when empty."""
        return None if self._mask is None else self._mask[:, : self._length]

    @property
    def keys(self) -> list[Tensor]:
        return [k[:, :, : self._length] for k in self._keys]

    @property
    def values(self) -> list[Tensor]:
        return [v[:, :, : self._length] for v in self._values]

    def extend(self, new: Tensor) -> tuple[Tensor | None, Tensor]:
        """Record ``new: (B, T)`` bool validity of the tokens about to be added; -> (the key
        mask (B, S + T), or None when every position is real; the new tokens' positions
        (B, T) long: each real token's rank among its row's real tokens, padding 0)."""
        new = new.bool()
        b, t = new.shape
        start = self._length
        if self._mask is None or self._mask.shape[1] < start + t:
            grown = new.new_zeros(b, _capacity(start + t, 0 if self._mask is None
                                               else self._mask.shape[1]))
            if self._mask is not None:
                grown[:, :start] = self._mask[:, :start]
            self._mask = grown
        self._mask[:, start : start + t] = new
        self._length = start + t
        self.all_real = self.all_real and bool(new.all())
        counts = new.long().cumsum(-1)  # (B, T)
        before = self._real if self._real is not None else counts.new_zeros(b)
        self._real = before + counts[:, -1]
        positions = (before[:, None] + counts - 1).clamp(min=0)
        return (None if self.all_real else self.mask), positions

    def extend_mask(self, new: Tensor) -> Tensor:
        """Record ``new: (B, T)`` validity for the tokens about to be added; -> (B, S + T)."""
        self.extend(new)
        assert self._mask is not None
        return self._mask[:, : self._length]

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add layer ``layer``'s new ``k, v: (B, Hkv, T, Dh)`` (after :meth:`extend`
        recorded them); -> all of them so far (B, Hkv, S, Dh)."""
        if layer > len(self._keys):
            raise ValueError(f"KVCache: layer {layer} appended before layer {len(self._keys)}")
        end = self._length
        start = end - k.shape[2]
        if layer == len(self._keys):
            self._keys.append(k.new_empty(0))
            self._values.append(v.new_empty(0))
        self._keys[layer] = self._write(self._keys[layer], start, k)
        self._values[layer] = self._write(self._values[layer], start, v)
        return self._keys[layer][:, :, :end], self._values[layer][:, :, :end]

    def _write(self, buffer: Tensor, start: int, new: Tensor) -> Tensor:
        """``new`` written at positions ``start..`` of ``buffer`` (grown if needed)."""
        end = start + new.shape[2]
        if torch.is_grad_enabled() and (new.requires_grad or buffer.requires_grad):
            return new if start == 0 else torch.cat([buffer[:, :, :start], new], dim=2)
        if buffer.dim() != 4 or buffer.shape[2] < end:
            capacity = self._mask.shape[1] if self._mask is not None else end
            b, h, _, d = new.shape
            grown = new.new_empty(b, h, max(capacity, end), d)
            if start:
                grown[:, :, :start] = buffer[:, :, :start]
            buffer = grown
        buffer[:, :, start:end] = new
        return buffer

    def reorder(self, index: Tensor) -> KVCache:
        """Keep batch rows ``index: (B',)`` (in that order), in place; returns self."""
        self._keys = [k.index_select(0, index) for k in self._keys]
        self._values = [v.index_select(0, index) for v in self._values]
        if self._mask is not None:
            self._mask = self._mask.index_select(0, index)
        if self._real is not None:
            self._real = self._real.index_select(0, index)
        return self

    def memory_bytes(self) -> int:
        """Bytes the cached keys and values of the ``length`` positions hold."""
        return sum(t.numel() * t.element_size() for t in [*self.keys, *self.values])

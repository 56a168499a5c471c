"""Rotary position embeddings (RoPE) with the scaling variants LLaMA-family configs declare.

Frequencies follow Hugging Face's ``modeling_rope_utils`` formula for formula:

* ``default``: ``inv_freq[i] = theta ** (-2i / d)``;
* ``linear``: ``inv_freq / factor`` (position interpolation);
* ``dynamic``: the NTK-aware base
  ``theta * (factor * L / max_positions - (factor - 1)) ** (d / (d - 2))`` once a call's
  length ``L = max(position) + 1`` exceeds ``max_positions`` (the default frequencies
  below it). Computed per call; Hugging Face keeps the largest frequencies it
  has seen until a call falls back under ``max_positions``, so the two differ only when a
  shorter call beyond ``max_positions`` follows a longer one;
* ``llama3``: Llama 3.1's wavelength-banded scaling (``factor``, ``low_freq_factor``,
  ``high_freq_factor``, ``original_max_positions``);
* ``yarn``: YaRN's ramp between interpolated and extrapolated frequencies and its
  attention factor (scales cos and sin).

The rotation is the "rotate half" layout: channel ``i`` pairs with ``i + d/2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")


@dataclass(frozen=True)
class RopeScaling:
    """A RoPE scaling variant and its parameters (only those of ``type`` are read)."""

    type: str = "default"
    factor: float = 1.0
    #: llama3 and yarn: the context length the model was pretrained with
    original_max_positions: int | None = None
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    beta_fast: float = 32.0  # yarn
    beta_slow: float = 1.0  # yarn
    attention_factor: float | None = None  # yarn; None: derived from factor (and mscale)
    mscale: float | None = None  # yarn
    mscale_all_dim: float | None = None  # yarn
    truncate: bool = True  # yarn

    def __post_init__(self) -> None:
        if self.type not in ROPE_TYPES:
            raise ValueError(f"unsupported RoPE scaling type {self.type!r}; mmcore implements "
                             f"{', '.join(ROPE_TYPES)}")
        if self.type in ("llama3", "yarn") and self.original_max_positions is None:
            raise ValueError(f"RoPE scaling {self.type!r} needs original_max_positions")


def default_frequencies(dim: int, theta: float) -> Tensor:
    """``theta ** (-2i / dim)`` for i < dim / 2, float32. (dim/2,)"""
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float32) / dim
    return 1.0 / (theta ** exponents)


def _llama3(inv_freq: Tensor, s: RopeScaling) -> Tensor:
    assert s.original_max_positions is not None
    old = s.original_max_positions
    low_wavelen, high_wavelen = old / s.low_freq_factor, old / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def yarn_attention_factor(s: RopeScaling) -> float:
    """The factor YaRN multiplies cos and sin by."""
    if s.attention_factor is not None:
        return s.attention_factor
    if s.mscale and s.mscale_all_dim:
        return _yarn_mscale(s.factor, s.mscale) / _yarn_mscale(s.factor, s.mscale_all_dim)
    return _yarn_mscale(s.factor)


def _yarn(dim: int, theta: float, s: RopeScaling) -> Tensor:
    assert s.original_max_positions is not None

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(s.original_max_positions / (rotations * 2 * math.pi))  # type: ignore[operator]
                / (2 * math.log(theta)))

    low, high = correction_dim(s.beta_fast), correction_dim(s.beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # as the reference does, to avoid a division by zero
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos_freqs = theta ** (torch.arange(0, dim, 2).to(torch.float32) / dim)
    extrapolation = 1 - ramp
    return (1.0 / (s.factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation


def rope_frequencies(dim: int, theta: float, scaling: RopeScaling, *, max_positions: int,
                     length: int | None = None) -> tuple[Tensor, float]:
    """(inverse frequencies (dim/2,) float32, cos/sin scale) for sequences of ``length``
    (read by ``dynamic`` only)."""
    kind = scaling.type
    if kind == "default":
        return default_frequencies(dim, theta), 1.0
    if kind == "linear":
        return default_frequencies(dim, theta) / scaling.factor, 1.0
    if kind == "dynamic":
        seq = max(length or max_positions, max_positions)
        base = theta * ((scaling.factor * seq / max_positions) - (scaling.factor - 1)) ** (
            dim / (dim - 2))
        return default_frequencies(dim, base), 1.0
    if kind == "llama3":
        return _llama3(default_frequencies(dim, theta), scaling), 1.0
    return _yarn(dim, theta, scaling), yarn_attention_factor(scaling)


def rotate_half(x: Tensor) -> Tensor:
    """(..., d) -> (-x[d/2:], x[:d/2]) concatenated."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x: (B, H, T, Dh)`` by ``cos, sin: (B, T, Dh)``."""
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)
    return x * cos + rotate_half(x) * sin


class RotaryEmbedding(nn.Module):
    """Positions (B, T) -> (cos, sin), each (B, T, head_dim) in float32. No parameters."""

    inv_freq: Tensor

    def __init__(self, *, head_dim: int, theta: float = 10000.0, max_positions: int = 2048,
                 scaling: RopeScaling | None = None) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head_dim, got {head_dim}")
        self.head_dim, self.theta, self.max_positions = head_dim, theta, max_positions
        self.scaling = scaling or RopeScaling()
        inv_freq, self.attention_factor = rope_frequencies(head_dim, theta, self.scaling,
                                                           max_positions=max_positions)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def _frequencies(self, positions: Tensor) -> Tensor:
        if self.scaling.type != "dynamic" or positions.numel() == 0:
            return self.inv_freq
        length = int(positions.max()) + 1
        if length <= self.max_positions:
            return self.inv_freq
        inv_freq, _ = rope_frequencies(self.head_dim, self.theta, self.scaling,
                                       max_positions=self.max_positions, length=length)
        return inv_freq.to(positions.device)

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        inv_freq = self._frequencies(positions).to(torch.float32)
        freqs = positions[..., None].to(torch.float32) * inv_freq  # (B, T, Dh/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, Dh)
        return emb.cos() * self.attention_factor, emb.sin() * self.attention_factor

"""Band-limited resampling: a polyphase windowed-sinc filter (Kaiser window) run as one
strided conv1d. The rate ratio is reduced by the gcd, so 44.1 kHz -> 16 kHz uses 160 phases
of a filter over 441-sample strides; the cut-off sits just below the lower Nyquist rate."""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

#: zero crossings of the sinc on each side (filter half-length, in lower-rate periods)
ZERO_CROSSINGS = 24
#: cut-off as a fraction of the lower Nyquist frequency (room for the transition band)
ROLLOFF = 0.945
#: Kaiser window shape: about 90 dB stop-band attenuation
KAISER_BETA = 9.0


@lru_cache(maxsize=16)
def _kernel(up: int, down: int) -> tuple[Tensor, int]:
    """Polyphase filters (up, 1, taps) for gcd-reduced rates ``down -> up``, and the
    half-width (in input samples) the signal is padded by."""
    cutoff = min(up, down) * ROLLOFF  # in units where the input rate is ``down``
    width = math.ceil(ZERO_CROSSINGS * down / cutoff)
    taps = torch.arange(-width, width + down, dtype=torch.float64) / down  # input times
    phase = -torch.arange(up, dtype=torch.float64)[:, None] / up  # output offsets
    t = (phase + taps[None, :]) * cutoff  # (up, taps), in zero-crossing units
    t = t.clamp(-ZERO_CROSSINGS, ZERO_CROSSINGS)
    beta = torch.tensor(KAISER_BETA, dtype=torch.float64)
    window = torch.i0(beta * torch.sqrt(1 - (t / ZERO_CROSSINGS) ** 2)) / torch.i0(beta)
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(math.pi * t) / (math.pi * t))
    kernel = sinc * window * (cutoff / down)  # unit DC gain
    return kernel[:, None, :].float(), width


def input_span(out_length: int, orig_rate: int, new_rate: int) -> int:
    """How many leading input samples determine the first ``out_length`` output samples of
    :func:`resample` exactly, so audio can be trimmed before it is resampled."""
    if orig_rate == new_rate or out_length <= 0:
        return max(out_length, 0)
    g = math.gcd(orig_rate, new_rate)
    up, down = new_rate // g, orig_rate // g
    _, width = _kernel(up, down)
    # output k comes from conv frame k // up, which reads inputs [j*down - width, j*down +
    # width + down) of the unpadded signal
    return ((out_length - 1) // up) * down + width + down


def resample(waveform: Tensor, orig_rate: int, new_rate: int) -> Tensor:
    """(..., L) at ``orig_rate`` -> (..., ceil(L * new_rate / orig_rate)) at ``new_rate``."""
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_rate} -> {new_rate}")
    if orig_rate == new_rate:
        return waveform
    g = math.gcd(orig_rate, new_rate)
    up, down = new_rate // g, orig_rate // g
    kernel, width = _kernel(up, down)
    shape, length = waveform.shape[:-1], waveform.shape[-1]
    x = waveform.reshape(-1, 1, length).float()  # (B, 1, L)
    x = F.pad(x, (width, width + down))
    out = F.conv1d(x, kernel.to(x.device), stride=down)  # (B, up, L / down + 1)
    out = out.transpose(1, 2).reshape(x.shape[0], -1)  # interleave phases: (B, L * up / down)
    target = math.ceil(up * length / down)
    return out[:, :target].reshape(*shape, target).to(waveform.dtype)

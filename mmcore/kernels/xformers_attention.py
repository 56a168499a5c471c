"""Attention through ``xformers.ops.memory_efficient_attention`` (imported when first called).

Same contract as :mod:`mmcore.kernels.attention`: ``q: (B, H, Nq, Dh)``, ``k, v: (B, H, Nk, Dh)``,
``key_padding_mask: (B, Nk)`` bool (True = a real key), ``causal`` aligned to the end of the
keys; a query with no allowed key returns zeros. xformers wants (B, N, H, Dh): the transposes
below are views, no copies.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mmcore.kernels.attention import allowed_pairs

#: xformers' CUTLASS kernels want the bias rows 16-byte aligned; pad the key dim to this.
_BIAS_ALIGN = 16


def _xops() -> Any:
    try:
        import xformers.ops as xops
    except ImportError as e:  # pragma: no cover - xformers is an optional GPU extra
        raise ImportError("the 'xformers' kernel needs the xformers package "
                          "(pip install 'mmcore[gpu]')") from e
    return xops


def _bias_and_keep(q: Tensor, k: Tensor, key_padding_mask: Tensor | None,
                   causal: bool) -> tuple[Any, Tensor | None]:
    """(attn_bias for xformers, bool (B, 1, Nq, 1) rows that have a key, or None)."""
    b, h, nq, _ = q.shape
    nk = k.shape[2]
    if key_padding_mask is None and not causal:
        return None, None
    if key_padding_mask is None and nq == nk:
        return _xops().LowerTriangularMask(), None
    if key_padding_mask is None:
        key_padding_mask = torch.ones(b, nk, dtype=torch.bool, device=q.device)
    allowed = allowed_pairs(nq, key_padding_mask, causal, q.device)  # (B, 1, Nq or 1, Nk)
    assert allowed is not None
    allowed = allowed.expand(b, 1, nq, nk)
    padded = -(-nk // _BIAS_ALIGN) * _BIAS_ALIGN
    # a finite "minus infinity": a fully masked row gives a uniform softmax, not NaN, in
    # forward and backward; such rows are zeroed afterwards via ``keep``
    bias = torch.zeros(b, 1, nq, padded, dtype=q.dtype, device=q.device)[..., :nk]
    bias.masked_fill_(~allowed, torch.finfo(q.dtype).min)
    keep = allowed.any(-1, keepdim=True)  # (B, 1, Nq, 1)
    return bias.expand(b, h, nq, nk), keep


def xformers_attention(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None,
                       causal: bool = False) -> Tensor:
    """xformers memory-efficient attention. (B, H, Nq, Dh) -> (B, H, Nq, Dh)."""
    bias, keep = _bias_and_keep(q, k, key_padding_mask, causal)
    out = _xops().memory_efficient_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias)
    out = out.transpose(1, 2)  # (B, H, Nq, Dh)
    if keep is not None:
        out = torch.where(keep, out, torch.zeros((), dtype=out.dtype, device=out.device))
    return out

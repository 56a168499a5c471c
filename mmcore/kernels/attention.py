"""Attention implementations. All take ``q: (B, H, Nq, Dh)``, ``k, v: (B, H, Nk, Dh)``,
``key_padding_mask: (B, Nk)`` bool (True = a real key) and ``causal``; return (B, H, Nq, Dh)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def allowed_pairs(nq: int, key_padding_mask: Tensor | None, causal: bool,
             device: torch.device) -> Tensor | None:
    """Boolean (B or 1, 1, Nq, Nk) mask of allowed query-key pairs, or None."""
    allowed: Tensor | None = None
    if key_padding_mask is not None:
        allowed = key_padding_mask[:, None, None, :]
    if causal:
        nk = key_padding_mask.shape[1] if key_padding_mask is not None else nq
        # query i (aligned to the end of the keys) may see keys j <= i + (nk - nq)
        tri = torch.ones(nq, nk, dtype=torch.bool, device=device).tril(nk - nq)
        allowed = tri[None, None] if allowed is None else allowed & tri
    return allowed


def reference_attention(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None,
                        causal: bool = False) -> Tensor:
    """Plain softmax(q k^T / sqrt(d)) v, computed in float32 at least. Always available."""
    dtype = q.dtype
    compute = torch.promote_types(dtype, torch.float32)
    scores = (q.to(compute) @ k.to(compute).transpose(-1, -2)) * q.shape[-1] ** -0.5
    if causal and key_padding_mask is None:
        key_padding_mask = torch.ones(k.shape[0], k.shape[2], dtype=torch.bool, device=k.device)
    allowed = allowed_pairs(q.shape[2], key_padding_mask, causal, q.device)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a query with no keys gets zeros
    return (probs @ v.to(compute)).to(dtype)


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None,
                   causal: bool = False) -> Tensor:
    """torch's scaled_dot_product_attention (flash / memory-efficient / math backends)."""
    if key_padding_mask is None and (not causal or q.shape[2] == k.shape[2]):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return _sdpa_masked(q, k, v, key_padding_mask, causal)


def _sdpa_masked(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None,
                 causal: bool) -> Tensor:
    if key_padding_mask is None:
        key_padding_mask = torch.ones(k.shape[0], k.shape[2], dtype=torch.bool, device=k.device)
    allowed = allowed_pairs(q.shape[2], key_padding_mask, causal, q.device)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    # rows with no allowed key come back as NaN; make them zeros like the reference
    return out.nan_to_num(0.0)

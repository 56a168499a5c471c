"""Attention implementations. All take ``q: (B, H, Nq, Dh)``, ``k, v: (B, H, Nk, Dh)``,
``key_padding_mask: (B, Nk)`` bool (True = a real key) and ``causal``; return (B, H, Nq, Dh).

Masks: a mask in which every key is real is the same as no mask, and costs time (the fused
kernels of some backends refuse masks), so callers drop it with :func:`real_padding`. On
CPU (torch >= 2.5) SDPA's fused flash kernel accepts a boolean ``(B, 1, 1, Nk)`` mask at
every size measured (docs/performance.md); a causal mask *with* padding would need an
``(B, 1, Nq, Nk)`` mask, so long sequences take :func:`chunked_attention` instead, which
never materialises Nq x Nk scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

#: above this many (query, key) pairs per head, masked-causal and reference attention run
#: chunked rather than materialising the scores
CHUNK_PAIRS = 1 << 22
#: query and key block sizes of :func:`chunked_attention`
BLOCK_Q, BLOCK_K = 1024, 1024


def real_padding(mask: Tensor | None) -> Tensor | None:
    """``mask: (B, N)`` if it marks some token as padding, else None (nothing padded).

    Under ``torch.compile`` the mask is kept as it is (a data-dependent branch would
    break the graph)."""
    if mask is None or torch.compiler.is_compiling():
        return mask
    return None if bool(mask.all()) else mask


def allowed_pairs(nq: int, key_padding_mask: Tensor | None, causal: bool,
                  device: torch.device, nk: int | None = None) -> Tensor | None:
    """Boolean (B or 1, 1, Nq, Nk) mask of allowed query-key pairs, or None. ``nk``
    defaults to the mask's length, else ``nq``."""
    allowed: Tensor | None = None
    if key_padding_mask is not None:
        allowed = key_padding_mask[:, None, None, :]
        nk = key_padding_mask.shape[1]
    if causal:
        nk = nk if nk is not None else nq
        # query i (aligned to the end of the keys) may see keys j <= i + (nk - nq)
        tri = torch.ones(nq, nk, dtype=torch.bool, device=device).tril(nk - nq)
        allowed = tri[None, None] if allowed is None else allowed & tri
    return allowed


def reference_attention(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None,
                        causal: bool = False) -> Tensor:
    """Plain softmax(q k^T / sqrt(d)) v, computed in float32 at least. Always available.
    Beyond ``CHUNK_PAIRS`` pairs per head it runs :func:`chunked_attention`."""
    if q.shape[2] * k.shape[2] > CHUNK_PAIRS:
        return chunked_attention(q, k, v, key_padding_mask, causal)
    dtype = q.dtype
    compute = torch.promote_types(dtype, torch.float32)
    scores = (q.to(compute) @ k.to(compute).transpose(-1, -2)) * q.shape[-1] ** -0.5
    allowed = allowed_pairs(q.shape[2], key_padding_mask, causal, q.device, k.shape[2])
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a query with no keys gets zeros
    return (probs @ v.to(compute)).to(dtype)


def _online_block(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None,
                  causal: bool, q_start: int, nq_total: int, block_k: int) -> Tensor:
    """Queries ``q: (B, H, bq, Dh)`` (rows q_start.. of nq_total) over every key, one key
    block at a time with a running max and sum (flash attention's online softmax)."""
    nk = k.shape[2]
    m = q.new_full((*q.shape[:3], 1), float("-inf"))  # running max (B, H, bq, 1)
    s = torch.zeros_like(m)  # running sum of exp
    acc = q.new_zeros(q.shape[:3] + v.shape[3:])  # (B, H, bq, Dv)
    for k0 in range(0, nk, block_k):
        k1 = min(k0 + block_k, nk)
        scores = (q @ k[:, :, k0:k1].transpose(-1, -2)) * q.shape[-1] ** -0.5  # (B,H,bq,bk)
        allowed = _block_allowed(key_padding_mask, causal, q_start, q.shape[2], nq_total,
                                 k0, k1, nk, q.device)
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        m_new = torch.maximum(m, scores.amax(-1, keepdim=True))
        safe = m_new.masked_fill(m_new == float("-inf"), 0.0)  # rows with no key yet
        p = torch.exp(scores - safe)
        correction = torch.exp(m - safe)
        s = s * correction + p.sum(-1, keepdim=True)
        acc = acc * correction + p @ v[:, :, k0:k1]
        m = m_new
    return acc / s.clamp(min=torch.finfo(s.dtype).tiny) * (s > 0)  # no key: zeros


def _block_allowed(key_padding_mask: Tensor | None, causal: bool, q_start: int, bq: int,
                   nq_total: int, k0: int, k1: int, nk: int,
                   device: torch.device) -> Tensor | None:
    """The allowed pairs of one (query block, key block) tile: (B or 1, 1, bq, k1 - k0)."""
    allowed = None if key_padding_mask is None else key_padding_mask[:, None, None, k0:k1]
    if causal:  # query i (of nq_total, aligned to the keys' end) sees keys j <= i + nk - nq
        rows = torch.arange(q_start, q_start + bq, device=device)[:, None] + (nk - nq_total)
        tri = torch.arange(k0, k1, device=device)[None, :] <= rows
        allowed = tri[None, None] if allowed is None else allowed & tri
    return allowed


def chunked_attention(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None,
                      causal: bool = False, block_q: int | None = None,
                      block_k: int | None = None) -> Tensor:
    """Exact attention in float32 at least, ``block_q x block_k`` scores at a time.

    Memory is O(N * Dh + block_q * block_k) in the forward pass; with gradients each query
    block is checkpointed, so the backward pass recomputes one block at a time instead of
    keeping Nq x Nk probabilities. (B, H, Nq, Dh) -> (B, H, Nq, Dh)."""
    dtype, nq = q.dtype, q.shape[2]
    block_q, block_k = block_q or BLOCK_Q, block_k or BLOCK_K
    compute = torch.promote_types(dtype, torch.float32)
    q, k, v = q.to(compute), k.to(compute), v.to(compute)
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    blocks = []
    for q0 in range(0, nq, block_q):
        args = (q[:, :, q0:q0 + block_q], k, v, key_padding_mask, causal, q0, nq, block_k)
        blocks.append(checkpoint(_online_block, *args, use_reentrant=False) if grad
                      else _online_block(*args))
    return torch.cat(blocks, dim=2).to(dtype)


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None,
                   causal: bool = False) -> Tensor:
    """torch's scaled_dot_product_attention (flash / memory-efficient / math backends).

    A CPU mask with nothing padded is dropped here (cheap; on CUDA the check would sync
    on every call, so :class:`~mmcore.layers.TransformerStack` checks once per stack)."""
    if key_padding_mask is not None and not key_padding_mask.is_cuda:
        key_padding_mask = real_padding(key_padding_mask)
    if key_padding_mask is None and (not causal or q.shape[2] == k.shape[2]):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    if causal and q.shape[2] * k.shape[2] > CHUNK_PAIRS:
        return chunked_attention(q, k, v, key_padding_mask, causal)  # no (Nq, Nk) mask
    return _sdpa_masked(q, k, v, key_padding_mask, causal)


def _sdpa_masked(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None,
                 causal: bool) -> Tensor:
    allowed = allowed_pairs(q.shape[2], key_padding_mask, causal, q.device, k.shape[2])
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    # rows with no allowed key come back as NaN; make them zeros like the reference
    return out.nan_to_num(0.0)

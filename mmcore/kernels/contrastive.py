"""Contrastive losses over L2-normalised embeddings without the batch-by-batch matrix.

Every implementation takes ``a: (M, D)``, ``b: (N, D)`` (rows already L2-normalised), a scalar
``logit_scale`` ``s`` and optionally a scalar ``logit_bias`` ``t``; logits are
``L[i, j] = s * a_i . b_j (+ t)``. Row ``i`` of ``a`` is positive with row
``row_offset + i`` of ``b`` (``0 <= row_offset <= N - M``); by default ``M == N`` and
``row_offset == 0``, i.e. the diagonal.

``kind="softmax"`` (CLIP, symmetric InfoNCE)::

    loss = 1/2 * [ mean_i CE(L[i, :], row_offset + i) + mean_i CE(L[:, row_offset + i], i) ]

``kind="sigmoid"`` (SigLIP)::

    loss = -1/M * sum_{i, j} log sigmoid(z_ij * L[i, j]),  z_ij = +1 if j == row_offset + i else -1

Rows of ``a`` may be a subset of a gathered batch (``M < N``; a data-parallel rank holding its
local rows, ``row_offset = rank * M``). Then the a->b cross-entropy and the sigmoid loss are
exactly that rank's share of the global loss (the mean over ranks of the local sigmoid losses
is the global one), while the b->a cross-entropy sees only the local rows as negatives. The
exact global b->a term (for a later distributed wrapper) needs the per-column log-sum-exps of
``_softmax_stats`` (kept here for the positive columns only) reduced across ranks, or the
a->b term alone of (b_local, a_all) as open_clip's ``local_loss`` does.

``chunked_contrastive_loss`` streams over ``block x block`` tiles (forward: online
log-sum-exp per row and per column; backward: recompute the tiles), so its extra memory is
O((M + N) * D + block^2) instead of O(M * N). The Triton version lives in
:mod:`mmcore.kernels.triton_contrastive`; :mod:`mmcore.kernels.catalogue` imports it only
when called. Checks and helpers shared with it live in :mod:`mmcore.kernels.contrastive_common`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mmcore.kernels.contrastive_common import (
    ContrastiveKind,
    as_scalar,
    blocks,
    check_contrastive_inputs,
    compute_dtype,
    positive_dots,
)

__all__ = ["ContrastiveKind", "chunked_contrastive_loss", "contrastive_accuracy",
           "reference_contrastive_loss"]
DEFAULT_BLOCK = 2048  # tile side of the chunked loss: 16 MiB of float32 logits per tile


def reference_contrastive_loss(a: Tensor, b: Tensor, logit_scale: Tensor | float, *,
                               kind: ContrastiveKind = "softmax",
                               logit_bias: Tensor | float | None = None,
                               row_offset: int = 0) -> Tensor:
    """The definition, materialising the (M, N) logits in float32 at least. Always present."""
    bias = None if logit_bias is None else as_scalar(logit_bias, a)
    check_contrastive_inputs(a, b, kind, bias, row_offset)
    compute = compute_dtype(a)
    logits = as_scalar(logit_scale, a) * (a.to(compute) @ b.to(compute).t())  # (M, N)
    rows = torch.arange(a.shape[0], device=a.device)
    target = rows + row_offset
    if kind == "softmax":
        a_to_b = F.cross_entropy(logits, target)
        b_to_a = F.cross_entropy(logits[:, target].t(), rows)  # positive columns over M rows
        return (a_to_b + b_to_a) / 2
    if bias is not None:
        logits = logits + bias
    signs = -torch.ones_like(logits)
    signs[rows, target] = 1.0
    return -F.logsigmoid(signs * logits).sum() / a.shape[0]


def _overlap(lo: int, hi: int, start: int, stop: int) -> bool:
    return lo < stop and start < hi


def _softmax_stats(a: Tensor, b: Tensor, scale: Tensor, row_offset: int,
                   block: int) -> tuple[Tensor, Tensor]:
    """Row log-sum-exp (M,) and column log-sum-exp over these rows (N,), streamed over tiles.

    Columns other than the positives ``row_offset .. row_offset + M`` get +inf, so that their
    softmax weight exp(L - col_lse) is 0 in the backward pass."""
    compute, (m, n) = scale.dtype, (a.shape[0], b.shape[0])
    row_lse = torch.full((m,), float("-inf"), dtype=compute, device=a.device)
    col_lse = torch.full((n,), float("-inf"), dtype=compute, device=a.device)
    for r0, r1 in blocks(m, block):
        a_blk = a[r0:r1].to(compute)
        for c0, c1 in blocks(n, block):
            tile = (a_blk @ b[c0:c1].to(compute).t()).mul_(scale)  # (Br, Bc)
            row_lse[r0:r1] = torch.logaddexp(row_lse[r0:r1], tile.logsumexp(1))
            if _overlap(row_offset, row_offset + m, c0, c1):
                col_lse[c0:c1] = torch.logaddexp(col_lse[c0:c1], tile.logsumexp(0))
    col_lse[:row_offset] = float("inf")
    col_lse[row_offset + m:] = float("inf")
    return row_lse, col_lse


def _sigmoid_partition(a: Tensor, b: Tensor, scale: Tensor, bias: Tensor,
                       block: int) -> Tensor:
    """sum_{i, j} softplus(L[i, j]) over all pairs, streamed over tiles. Scalar."""
    total = torch.zeros((), dtype=scale.dtype, device=a.device)
    for r0, r1 in blocks(a.shape[0], block):
        a_blk = a[r0:r1].to(scale.dtype)
        for c0, c1 in blocks(b.shape[0], block):
            tile = (a_blk @ b[c0:c1].to(scale.dtype).t()).mul_(scale).add_(bias)
            total += F.softplus(tile).sum()
    return total


class _ChunkedContrastive(torch.autograd.Function):
    """The loss and its gradients, tile by tile; nothing of size M x N is ever allocated."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor, scale: Tensor, bias: Tensor | None,
                kind: str, row_offset: int, block: int) -> Tensor:
        compute = compute_dtype(a)
        s = scale.detach().to(compute)
        t = torch.zeros((), dtype=compute, device=a.device) if bias is None else \
            bias.detach().to(compute)
        m = a.shape[0]
        positives = s * positive_dots(a, b, row_offset, compute, block) + t  # (M,)
        row_lse = col_lse = positives.new_empty(0)  # only the softmax kind needs them
        if kind == "softmax":
            row_lse, col_lse = _softmax_stats(a, b, s, row_offset, block)
            used = col_lse[row_offset:row_offset + m]
            loss = (row_lse.sum() + used.sum()) / (2 * m) - positives.sum() / m
        else:
            loss = (_sigmoid_partition(a, b, s, t, block) - positives.sum()) / m
        ctx.save_for_backward(a, b, s, t, row_lse, col_lse)
        ctx.kind, ctx.row_offset, ctx.block = kind, row_offset, block
        ctx.dtypes = (a.dtype, b.dtype, scale.dtype, None if bias is None else bias.dtype)
        return loss

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        a, b, s, t, row_lse, col_lse = ctx.saved_tensors
        da, db, ds, dt = _chunked_backward(a, b, s, t, row_lse, col_lse, grad.to(s.dtype),
                                           ctx.kind, ctx.row_offset, ctx.block)
        a_dtype, b_dtype, s_dtype, t_dtype = ctx.dtypes
        return (da.to(a_dtype), db.to(b_dtype), ds.to(s_dtype),
                None if t_dtype is None else dt.to(t_dtype), None, None, None)


def _tile_grad(tile: Tensor, kind: str, coef: Tensor, row_lse: Tensor, col_lse: Tensor | None,
               t: Tensor) -> Tensor:
    """dLoss/dL on one (Br, Bc) tile, without the positive-pair term; reuses ``tile``'s memory.

    softmax: coef * (exp(L - row_lse_i) + exp(L - col_lse_j)), coef = g / 2M, the column part
    only where col_lse is finite; sigmoid: coef * sigmoid(L + t), coef = g / M."""
    if kind == "sigmoid":
        return tile.add_(t).sigmoid_().mul_(coef)
    grad = torch.sub(tile, row_lse[:, None]).exp_()
    if col_lse is not None:
        grad.add_(tile.sub_(col_lse[None, :]).exp_())
    return grad.mul_(coef)


def _chunked_backward(a: Tensor, b: Tensor, s: Tensor, t: Tensor, row_lse: Tensor,
                      col_lse: Tensor, grad: Tensor, kind: str, row_offset: int,
                      block: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients wrt a (M, D), b (N, D), logit_scale and logit_bias (scalars), in float32+."""
    compute, (m, n) = s.dtype, (a.shape[0], b.shape[0])
    coef = grad / (2 * m) if kind == "softmax" else grad / m
    da = torch.empty(m, a.shape[1], dtype=compute, device=a.device)
    db = torch.zeros(n, b.shape[1], dtype=compute, device=a.device)  # before the factor s
    ds = torch.zeros((), dtype=compute, device=a.device)
    dt = -grad  # the positive pairs' part of sum_ij dLoss/dL (sigmoid only)
    for r0, r1 in blocks(m, block):
        a_blk = a[r0:r1].to(compute)
        acc = torch.zeros_like(a_blk)  # dLoss/da_blk before the factor s
        for c0, c1 in blocks(n, block):
            b_blk = b[c0:c1].to(compute)
            tile = (a_blk @ b_blk.t()).mul_(s)
            used = _overlap(row_offset, row_offset + m, c0, c1) and kind == "softmax"
            g_tile = _tile_grad(tile, kind, coef, row_lse[r0:r1],
                                col_lse[c0:c1] if used else None, t)
            if kind == "sigmoid":
                dt = dt + g_tile.sum()
            acc.addmm_(g_tile, b_blk)
            db[c0:c1].addmm_(g_tile.t(), a_blk)
        # positive pairs: dLoss/dL[i, row_offset + i] gets -g / M on top of the tiles
        pos = slice(row_offset + r0, row_offset + r1)
        acc.sub_(b[pos].to(compute) * (grad / m))
        db[pos].sub_(a_blk * (grad / m))
        ds += (a_blk * acc).sum()  # sum_ij dLoss/dL_ij * a_i . b_j, this row block
        da[r0:r1] = acc.mul_(s)
    return da, db.mul_(s), ds, dt


def chunked_contrastive_loss(a: Tensor, b: Tensor, logit_scale: Tensor | float, *,
                             kind: ContrastiveKind = "softmax",
                             logit_bias: Tensor | float | None = None, row_offset: int = 0,
                             block_size: int = DEFAULT_BLOCK) -> Tensor:
    """The loss in pure PyTorch, ``block_size x block_size`` tiles at a time. Scalar.

    a: (M, D), b: (N, D) L2-normalised; extra memory O((M + N) * D + block_size^2)."""
    bias = None if logit_bias is None else as_scalar(logit_bias, a)
    check_contrastive_inputs(a, b, kind, bias, row_offset)
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    loss: Tensor = _ChunkedContrastive.apply(a, b, as_scalar(logit_scale, a), bias, kind,
                                             row_offset, block_size)
    return loss


@torch.no_grad()
def contrastive_accuracy(a: Tensor, b: Tensor, *, row_offset: int = 0,
                         block_size: int = 4096) -> Tensor:
    """Top-1 accuracy of a -> b (row i is right when its best column is row_offset + i),
    from a running per-row argmax over column tiles: no (M, N) matrix. Scalar float."""
    m, n = a.shape[0], b.shape[0]
    best = torch.full((m,), float("-inf"), dtype=compute_dtype(a), device=a.device)
    arg = torch.zeros(m, dtype=torch.long, device=a.device)
    for r0, r1 in blocks(m, block_size):
        a_blk = a[r0:r1].to(best.dtype)
        for c0, c1 in blocks(n, block_size):
            value, index = (a_blk @ b[c0:c1].to(best.dtype).t()).max(dim=1)
            better = value > best[r0:r1]  # strict: ties keep the first column, like argmax
            best[r0:r1] = torch.where(better, value, best[r0:r1])
            arg[r0:r1] = torch.where(better, index + c0, arg[r0:r1])
    target = torch.arange(m, device=a.device) + row_offset
    return (arg == target).float().mean()

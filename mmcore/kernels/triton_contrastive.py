"""Triton kernels for the contrastive loss of :mod:`mmcore.kernels.contrastive`.

Imported only when the ``triton`` candidate runs (importing mmcore never imports triton).
Forward: one program per ``BLOCK_M`` rows streams over column tiles of ``s * x @ y^T`` and keeps
an online log-sum-exp (softmax) or a softplus sum (sigmoid) per row; the column statistics
of the softmax loss are the same kernel with the roles of a and b swapped (over the positive
columns only). Backward: one program per (``BLOCK_M`` rows, ``BLOCK_DOUT`` features)
recomputes the logit tiles, forms dLoss/dlogits in registers and accumulates it times ``y``;
dL/db is the same kernel on the transposed problem. Nothing of size M x N is allocated.

Under ``TRITON_INTERPRET=1`` (set before triton is imported) the kernels run on CPU tensors;
that is how they are tested. Block sizes are reasonable defaults, not tuned on a GPU.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from mmcore.kernels.contrastive import chunked_contrastive_loss
from mmcore.kernels.contrastive_common import (
    ContrastiveKind,
    as_scalar,
    check_contrastive_inputs,
    positive_dots,
)

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
BLOCK_M, BLOCK_N, BLOCK_K = 64, 64, 32
MAX_BLOCK_DOUT = 128  # features per backward program; larger D recomputes the tiles D/128 times


@triton.jit
def _logit_tile(x_ptr, y_ptr, rows, cols, row_ok, col_ok, D, sxm, sxd, syn, syd, scale,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                PRECISION: tl.constexpr):
    """s * x[rows] @ y[cols]^T as a (BLOCK_M, BLOCK_N) float32 tile, over D in BLOCK_K steps."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < D
        x = tl.load(x_ptr + rows[:, None] * sxm + ks[None, :] * sxd,
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        y_t = tl.load(y_ptr + ks[:, None] * syd + cols[None, :] * syn,
                      mask=k_ok[:, None] & col_ok[None, :], other=0.0)  # (BLOCK_K, BLOCK_N)
        acc = tl.dot(x, y_t, acc, input_precision=PRECISION)
    return acc * scale


@triton.jit
def _row_stats_kernel(x_ptr, y_ptr, scale_ptr, bias_ptr, out_ptr, M, N, D,
                      sxm, sxd, syn, syd,
                      SIGMOID: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """out[i] = logsumexp_j L[i, j] (softmax) or sum_j softplus(L[i, j] + t) (sigmoid),
    L = s * x @ y^T; x: (M, D), y: (N, D), out: (M,) float32."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    scale = tl.load(scale_ptr)
    bias = tl.load(bias_ptr)
    run_max = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for c0 in range(0, N, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        logits = _logit_tile(x_ptr, y_ptr, rows, cols, row_ok, col_ok, D, sxm, sxd, syn, syd,
                             scale, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION)
        if SIGMOID:
            z = logits + bias
            softplus = tl.maximum(z, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(z)))
            run_sum += tl.sum(tl.where(col_ok[None, :], softplus, 0.0), axis=1)
        else:
            logits = tl.where(col_ok[None, :], logits, float("-inf"))
            new_max = tl.maximum(run_max, tl.max(logits, axis=1))
            run_sum = run_sum * tl.exp(run_max - new_max) + \
                tl.sum(tl.exp(logits - new_max[:, None]), axis=1)
            run_max = new_max
    out = run_sum if SIGMOID else run_max + tl.log(run_sum)  # SIGMOID is static
    tl.store(out_ptr + rows, out, mask=row_ok)


@triton.jit
def _grad_kernel(x_ptr, y_ptr, scale_ptr, bias_ptr, lse_x_ptr, lse_y_ptr, w_x_ptr, w_y_ptr,
                 coef_ptr, diag_coef_ptr, dx_ptr, partial_ptr, M, N, D, diag_offset,
                 sxm, sxd, syn, syd, sdm, sdd,
                 SIGMOID: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr, BLOCK_DOUT: tl.constexpr, PRECISION: tl.constexpr):
    """dx[rows, feats] = s * (coef * W @ y - c * y[rows + diag_offset])[:, feats] with
    coef * W[i, j] = dLoss/dL[i, j] off the positive pairs, W in [0, 2] so that it survives
    a cast to float16 for the tensor-core dot:
      softmax: w_x[i] exp(L[i, j] - lse_x[i]) + w_y[j] exp(L[i, j] - lse_y[j])
      sigmoid: (w_x[i] + w_y[j]) sigmoid(L[i, j] + t)
    and c = diag_coef the positive pairs' -dLoss/dL. partial[program] = (sum of x * (coef W y
    - c y_pos) over the block (a share of dLoss/ds), coef * sum of W (of dLoss/dt))."""
    pid_m = tl.program_id(0)
    pid_d = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    feats = pid_d * BLOCK_DOUT + tl.arange(0, BLOCK_DOUT)
    feat_ok = feats < D
    scale = tl.load(scale_ptr)
    bias = tl.load(bias_ptr)
    lse_x = tl.load(lse_x_ptr + rows, mask=row_ok, other=0.0)
    w_x = tl.load(w_x_ptr + rows, mask=row_ok, other=0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_DOUT), dtype=tl.float32)
    g_rows = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for c0 in range(0, N, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        logits = _logit_tile(x_ptr, y_ptr, rows, cols, row_ok, col_ok, D, sxm, sxd, syn, syd,
                             scale, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION)
        w_y = tl.load(w_y_ptr + cols, mask=col_ok, other=0.0)
        if SIGMOID:
            g = (w_x[:, None] + w_y[None, :]) * tl.sigmoid(logits + bias)
        else:
            lse_y = tl.load(lse_y_ptr + cols, mask=col_ok, other=float("inf"))
            g = w_x[:, None] * tl.exp(logits - lse_x[:, None]) + \
                w_y[None, :] * tl.exp(logits - lse_y[None, :])
        g = tl.where(row_ok[:, None] & col_ok[None, :], g, 0.0)
        g_rows += tl.sum(g, axis=1)
        y_feats = tl.load(y_ptr + cols[:, None] * syn + feats[None, :] * syd,
                          mask=col_ok[:, None] & feat_ok[None, :], other=0.0)
        acc = tl.dot(g.to(y_feats.dtype), y_feats, acc, input_precision=PRECISION)
    pos = rows + diag_offset
    pos_ok = row_ok & (pos >= 0) & (pos < N)
    y_pos = tl.load(y_ptr + pos[:, None] * syn + feats[None, :] * syd,
                    mask=pos_ok[:, None] & feat_ok[None, :], other=0.0)
    coef = tl.load(coef_ptr)
    acc = coef * acc - tl.load(diag_coef_ptr) * y_pos.to(tl.float32)
    block_ok = row_ok[:, None] & feat_ok[None, :]
    x_feats = tl.load(x_ptr + rows[:, None] * sxm + feats[None, :] * sxd, mask=block_ok,
                      other=0.0)
    tl.store(dx_ptr + rows[:, None] * sdm + feats[None, :] * sdd,
             (acc * scale).to(dx_ptr.dtype.element_ty), mask=block_ok)
    program = pid_m * tl.num_programs(1) + pid_d
    tl.store(partial_ptr + 2 * program, tl.sum(x_feats.to(tl.float32) * acc))
    tl.store(partial_ptr + 2 * program + 1, coef * tl.sum(g_rows))


def _precision(dtype: torch.dtype) -> str:
    """float32 dots as torch does them: IEEE unless torch allows TF32 for matmuls."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


def _row_stats(x: Tensor, y: Tensor, s: Tensor, t: Tensor, sigmoid: bool) -> Tensor:
    """Per row of x (M, D) against every row of y (N, D): log-sum-exp or softplus sum. (M,)."""
    out = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(x.shape[0], BLOCK_M),)
    _row_stats_kernel[grid](x, y, s, t, out, x.shape[0], y.shape[0], x.shape[1],
                            x.stride(0), x.stride(1), y.stride(0), y.stride(1),
                            SIGMOID=sigmoid, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K,
                            PRECISION=_precision(x.dtype))
    return out


def _grad(x: Tensor, y: Tensor, s: Tensor, t: Tensor, lse: tuple[Tensor, Tensor],
          weights: tuple[Tensor, Tensor], coefs: tuple[Tensor, Tensor], diag_offset: int,
          sigmoid: bool) -> tuple[Tensor, Tensor]:
    """dLoss/dx (M, D) in x's dtype and the per-program partials (grid_m, grid_d, 2)."""
    m, d = x.shape
    block_dout = min(MAX_BLOCK_DOUT, max(16, triton.next_power_of_2(d)))
    grid = (triton.cdiv(m, BLOCK_M), triton.cdiv(d, block_dout))
    dx = torch.empty_like(x)
    partial = torch.empty(grid[0], grid[1], 2, dtype=torch.float32, device=x.device)
    _grad_kernel[grid](x, y, s, t, lse[0], lse[1], weights[0], weights[1], coefs[0], coefs[1],
                       dx, partial,
                       m, y.shape[0], d, diag_offset,
                       x.stride(0), x.stride(1), y.stride(0), y.stride(1),
                       dx.stride(0), dx.stride(1),
                       SIGMOID=sigmoid, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K,
                       BLOCK_DOUT=block_dout, PRECISION=_precision(x.dtype))
    return dx, partial


class _TritonContrastive(torch.autograd.Function):
    """Forward and backward of the contrastive loss with the kernels above."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor, scale: Tensor, bias: Tensor | None,
                kind: str, row_offset: int) -> Tensor:
        m = a.shape[0]
        s = scale.detach().float().reshape(1)
        t = torch.zeros(1, device=a.device) if bias is None else bias.detach().float().reshape(1)
        positives = s * positive_dots(a, b, row_offset, torch.float32, 4096) + t  # (M,)
        sigmoid = kind == "sigmoid"
        row_stats = _row_stats(a, b, s, t, sigmoid)  # (M,)
        if sigmoid:
            col_lse = row_stats.new_empty(0)
            loss = (row_stats.sum() - positives.sum()) / m
        else:  # positive columns of b against the M rows of a
            col_lse = _row_stats(b[row_offset:row_offset + m], a, s, t, sigmoid=False)
            loss = (row_stats.sum() + col_lse.sum()) / (2 * m) - positives.sum() / m
        ctx.save_for_backward(a, b, s, t, row_stats, col_lse)
        ctx.kind, ctx.row_offset = kind, row_offset
        ctx.dtypes = (scale.dtype, None if bias is None else bias.dtype)
        return loss

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        a, b, s, t, row_stats, col_lse = ctx.saved_tensors
        m, n, offset = a.shape[0], b.shape[0], ctx.row_offset
        sigmoid = ctx.kind == "sigmoid"
        g = grad.float().reshape(1)
        coefs = (g / (m if sigmoid else 2 * m), g / m)  # (off the positives, on them)
        rows_w = torch.ones(m, device=a.device)
        cols_w = torch.zeros(n, device=a.device)  # sigmoid: b's rows get theirs via w_y
        cols_lse = torch.full((n,), float("inf"), device=a.device)
        if not sigmoid:
            cols_w[offset:offset + m] = 1.0
            cols_lse[offset:offset + m] = col_lse
        rows_lse = rows_w if sigmoid else row_stats  # unused by the sigmoid kernel
        da, partial = _grad(a, b, s, t, (rows_lse, cols_lse), (rows_w, cols_w), coefs,
                            offset, sigmoid)
        db, _ = _grad(b, a, s, t, (cols_lse, rows_lse), (cols_w, rows_w), coefs, -offset,
                      sigmoid)
        ds = partial[..., 0].sum()
        dt = partial[:, 0, 1].sum() - g[0]  # any one feature block holds all of sum G
        s_dtype, t_dtype = ctx.dtypes
        return (da, db, ds.to(s_dtype), None if t_dtype is None else dt.to(t_dtype),
                None, None)


def _runs_here(a: Tensor, b: Tensor) -> bool:
    """Whether the kernels can take these inputs (else the chunked PyTorch loss does)."""
    from triton.runtime.interpreter import InterpretedFunction

    on_device = a.is_cuda or isinstance(_row_stats_kernel, InterpretedFunction)
    return on_device and a.dtype in _DTYPES and b.dtype == a.dtype


def triton_contrastive_loss(a: Tensor, b: Tensor, logit_scale: Tensor | float, *,
                            kind: ContrastiveKind = "softmax",
                            logit_bias: Tensor | float | None = None,
                            row_offset: int = 0) -> Tensor:
    """The contrastive loss with Triton kernels; a: (M, D), b: (N, D) L2-normalised. Scalar
    float32. Other dtypes (float64) and non-CUDA tensors go to the chunked PyTorch loss."""
    if not _runs_here(a, b):
        return chunked_contrastive_loss(a, b, logit_scale, kind=kind, logit_bias=logit_bias,
                                        row_offset=row_offset)
    bias = None if logit_bias is None else as_scalar(logit_bias, a)
    check_contrastive_inputs(a, b, kind, bias, row_offset)
    loss: Tensor = _TritonContrastive.apply(a.contiguous(), b.contiguous(),
                                            as_scalar(logit_scale, a), bias, kind, row_offset)
    return loss

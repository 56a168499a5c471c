"""The Triton kernels of :mod:`mmcore.kernels.triton_attention` (forward, split combine,
dK/dV and dQ backward); the launch logic, checks and autograd live there.

Imports triton unconditionally: :mod:`mmcore.kernels.triton_attention` imports this module
only where triton is installed. Shapes and the algorithm are described in that module.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["attn_bwd_dkdv_kernel", "attn_bwd_dq_kernel", "attn_fwd_kernel", "combine_kernel"]



@triton.jit
def _mm(a, b, PRECISION: tl.constexpr, DOT_F32: tl.constexpr):
    """a @ b in float32. DOT_F32 upcasts the operands first: only for the CPU
    interpreter, whose tl.dot multiplies bfloat16's raw bits (Triton 3.x)."""
    if DOT_F32:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=PRECISION)

@triton.jit
def _mm_acc(a, b, acc, PRECISION: tl.constexpr, DOT_F32: tl.constexpr):
    """acc + a @ b (float32 accumulator); DOT_F32 as in :func:`_mm`."""
    if DOT_F32:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)

@triton.jit
def attn_fwd_kernel(
    Q, K, V, Mask, Out, Lse,
    sqb, sqh, sqm, sqd,
    skb, skh, skn, skd,
    svb, svh, svn, svd,
    smb, smn,
    sos, sobh, som,
    sls, slbh,
    H, Nq, Nk, Dh, keys_per_split, causal_offset, qk_scale,
    HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
    DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One (query block, batch*head, key split): normalised output and base-2 lse.

    Out: (S, B*H, Nq, Dh) with unit stride on Dh; Lse: (S, B*H, Nq) with unit stride on Nq.
    """
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_s = tl.program_id(2)
    off_b = (pid_bh // H).to(tl.int64)
    off_h = (pid_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < Nq
    d_ok = offs_d < Dh
    q_ptrs = Q + off_b * sqb + off_h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd
    q = tl.load(q_ptrs, mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    k_base = K + off_b * skb + off_h * skh
    v_base = V + off_b * svb + off_h * svh

    lo = pid_s * keys_per_split
    hi = tl.minimum(lo + keys_per_split, Nk)
    if CAUSAL:
        hi = tl.minimum(hi, (pid_m + 1) * BLOCK_M + causal_offset)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < hi
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + offs_n[:, None] * skn + offs_d[None, :] * skd,
                    mask=kv_mask, other=0.0)
        s = _mm(q, tl.trans(k), PRECISION, DOT_F32) * qk_scale
        ok = m_ok[:, None] & n_ok[None, :]
        if HAS_MASK:
            key = tl.load(Mask + off_b * smb + offs_n * smn, mask=n_ok, other=0)
            ok = ok & (key != 0)[None, :]
        if CAUSAL:
            ok = ok & (offs_n[None, :] <= offs_m[:, None] + causal_offset)
        s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # rows with no allowed key so far keep m = -inf; subtract 0 there, not -inf
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + offs_n[:, None] * svn + offs_d[None, :] * svd,
                    mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None]
        acc = _mm_acc(p.to(v.dtype), v, acc, PRECISION, DOT_F32)
        m_i = m_new

    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = tl.where(empty, float("-inf"), m_i + tl.log2(l_safe))
    bh = pid_bh.to(tl.int64)
    split = pid_s.to(tl.int64)
    o_ptrs = Out + split * sos + bh * sobh + offs_m[:, None] * som + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
    tl.store(Lse + split * sls + bh * slbh + offs_m, lse, mask=m_ok)

@triton.jit
def combine_kernel(
    OutPart, LsePart, Out, Lse,
    sps, spbh, spm,
    sls, slbh,
    sobh, som,
    S, Nq, Dh,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Merge S partial softmaxes: OutPart (S, B*H, Nq, Dh), LsePart (S, B*H, Nq) ->
    Out (B*H, Nq, Dh), Lse (B*H, Nq) (contiguous)."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < Nq
    od_mask = m_ok[:, None] & (offs_d < Dh)[None, :]
    lse_base = LsePart + bh * slbh + offs_m
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    for s in range(0, S):
        lse_s = tl.load(lse_base + s * sls, mask=m_ok, other=float("-inf"))
        m = tl.maximum(m, lse_s)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    l_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    o_base = OutPart + bh * spbh + offs_m[:, None] * spm + offs_d[None, :]
    for s in range(0, S):
        lse_s = tl.load(lse_base + s * sls, mask=m_ok, other=float("-inf"))
        w = tl.exp2(lse_s - m_safe)
        o_s = tl.load(o_base + s * sps, mask=od_mask, other=0.0)
        acc += w[:, None] * o_s
        l_sum += w
    empty = l_sum == 0.0
    l_safe = tl.where(empty, 1.0, l_sum)
    out = acc / l_safe[:, None]
    lse = tl.where(empty, float("-inf"), m_safe + tl.log2(l_safe))
    tl.store(Out + bh * sobh + offs_m[:, None] * som + offs_d[None, :],
             out.to(Out.dtype.element_ty), mask=od_mask)
    tl.store(Lse + bh * Nq + offs_m, lse, mask=m_ok)

@triton.jit
def attn_bwd_dkdv_kernel(
    Q, K, V, Mask, DO, Lse, Delta, DK, DV,
    sqb, sqh, sqm, sqd,
    skb, skh, skn, skd,
    svb, svh, svn, svd,
    sdob, sdoh, sdom, sdod,
    smb, smn,
    H, Nq, Nk, Dh, causal_offset, qk_scale, sm_scale,
    HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
    DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dk, dv of one key block: walk the query blocks that can see it.

    Lse, Delta: (B*H, Nq) contiguous; DK, DV: (B*H, Nk, Dh) contiguous.
    """
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    off_b = (pid_bh // H).to(tl.int64)
    off_h = (pid_bh % H).to(tl.int64)
    bh = pid_bh.to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < Nk
    d_ok = offs_d < Dh
    kv_mask = n_ok[:, None] & d_ok[None, :]
    k = tl.load(K + off_b * skb + off_h * skh + offs_n[:, None] * skn + offs_d[None, :] * skd,
                mask=kv_mask, other=0.0)
    v = tl.load(V + off_b * svb + off_h * svh + offs_n[:, None] * svn + offs_d[None, :] * svd,
                mask=kv_mask, other=0.0)
    key_ok = n_ok
    if HAS_MASK:
        key = tl.load(Mask + off_b * smb + offs_n * smn, mask=n_ok, other=0)
        key_ok = key_ok & (key != 0)
    q_base = Q + off_b * sqb + off_h * sqh
    do_base = DO + off_b * sdob + off_h * sdoh

    lo = 0
    if CAUSAL:
        # query i sees key j iff i >= j - causal_offset
        lo = tl.maximum(pid_n * BLOCK_N - causal_offset, 0)
        lo = (lo // BLOCK_M) * BLOCK_M
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for start_m in range(lo, Nq, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        m_ok = offs_m < Nq
        qd_mask = m_ok[:, None] & d_ok[None, :]
        q = tl.load(q_base + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                    mask=qd_mask, other=0.0)
        lse = tl.load(Lse + bh * Nq + offs_m, mask=m_ok, other=0.0)
        lse = tl.where(lse == float("-inf"), 0.0, lse)  # a query with no key: p = 0 below
        s_t = _mm(k, tl.trans(q), PRECISION, DOT_F32) * qk_scale  # (N, M)
        ok = key_ok[:, None] & m_ok[None, :]
        if CAUSAL:
            ok = ok & (offs_n[:, None] <= offs_m[None, :] + causal_offset)
        p_t = tl.where(ok, tl.exp2(s_t - lse[None, :]), 0.0)
        do = tl.load(do_base + offs_m[:, None] * sdom + offs_d[None, :] * sdod,
                     mask=qd_mask, other=0.0)
        dv = _mm_acc(p_t.to(do.dtype), do, dv, PRECISION, DOT_F32)
        delta = tl.load(Delta + bh * Nq + offs_m, mask=m_ok, other=0.0)
        dp_t = _mm(v, tl.trans(do), PRECISION, DOT_F32)  # (N, M)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = _mm_acc(ds_t.to(q.dtype), q, dk, PRECISION, DOT_F32)
    dk = dk * sm_scale
    out_off = bh * Nk * Dh + offs_n[:, None] * Dh + offs_d[None, :]
    tl.store(DK + out_off, dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + out_off, dv.to(DV.dtype.element_ty), mask=kv_mask)

@triton.jit
def attn_bwd_dq_kernel(
    Q, K, V, Mask, DO, Lse, Delta, DQ,
    sqb, sqh, sqm, sqd,
    skb, skh, skn, skd,
    svb, svh, svn, svd,
    sdob, sdoh, sdom, sdod,
    smb, smn,
    sdqs,
    H, Nq, Nk, Dh, keys_per_split, causal_offset, qk_scale, sm_scale,
    HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
    DOT_F32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """(Partial) dq of one query block over one key split.

    DQ: (S, B*H, Nq, Dh), contiguous in its last three dims; split stride ``sdqs``.
    """
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_s = tl.program_id(2)
    off_b = (pid_bh // H).to(tl.int64)
    off_h = (pid_bh % H).to(tl.int64)
    bh = pid_bh.to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < Nq
    d_ok = offs_d < Dh
    qd_mask = m_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + off_b * sqb + off_h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                mask=qd_mask, other=0.0)
    do = tl.load(DO + off_b * sdob + off_h * sdoh + offs_m[:, None] * sdom
                 + offs_d[None, :] * sdod, mask=qd_mask, other=0.0)
    lse = tl.load(Lse + bh * Nq + offs_m, mask=m_ok, other=0.0)
    lse = tl.where(lse == float("-inf"), 0.0, lse)
    delta = tl.load(Delta + bh * Nq + offs_m, mask=m_ok, other=0.0)
    k_base = K + off_b * skb + off_h * skh
    v_base = V + off_b * svb + off_h * svh

    lo = pid_s * keys_per_split
    hi = tl.minimum(lo + keys_per_split, Nk)
    if CAUSAL:
        hi = tl.minimum(hi, (pid_m + 1) * BLOCK_M + causal_offset)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < hi
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + offs_n[:, None] * skn + offs_d[None, :] * skd,
                    mask=kv_mask, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * svn + offs_d[None, :] * svd,
                    mask=kv_mask, other=0.0)
        s = _mm(q, tl.trans(k), PRECISION, DOT_F32) * qk_scale
        ok = m_ok[:, None] & n_ok[None, :]
        if HAS_MASK:
            key = tl.load(Mask + off_b * smb + offs_n * smn, mask=n_ok, other=0)
            ok = ok & (key != 0)[None, :]
        if CAUSAL:
            ok = ok & (offs_n[None, :] <= offs_m[:, None] + causal_offset)
        p = tl.where(ok, tl.exp2(s - lse[:, None]), 0.0)
        dp = _mm(do, tl.trans(v), PRECISION, DOT_F32)
        ds = p * (dp - delta[:, None])
        dq = _mm_acc(ds.to(k.dtype), k, dq, PRECISION, DOT_F32)
    dq = dq * sm_scale
    dq_ptrs = (DQ + pid_s.to(tl.int64) * sdqs + bh * Nq * Dh
               + offs_m[:, None] * Dh + offs_d[None, :])
    tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty), mask=qd_mask)

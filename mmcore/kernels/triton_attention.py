"""Flash attention in Triton: forward (optionally split over the keys) and backward.

Shapes follow :mod:`mmcore.kernels.attention`: ``q: (B, H, Nq, Dh)``, ``k, v: (B, H, Nk, Dh)``,
``key_padding_mask: (B, Nk)`` bool (True = a real key), ``causal`` aligned to the end of the
keys (query i sees keys j <= i + Nk - Nq); a query with no allowed key returns zeros.

The (Nq, Nk) score matrix never reaches global memory: each program keeps one
(BLOCK_M, BLOCK_N) tile in registers with an online softmax (running max and sum per row,
base 2), accumulates in float32 whatever the input dtype, and saves one log-sum-exp per
query for the backward. The backward recomputes the scores tile by tile
(FlashAttention-2): one kernel walks the queries for each key block (dk, dv), another walks
the keys for each query block (dq). The head dim is padded to a power of two inside the
kernels by masked loads, so any Dh up to 256 works (the dispatcher offers 32..128).

Split-K (:func:`triton_cross_attention`): few queries over very many keys (256 latents over
50k image tokens) give only ``B * H * Nq / BLOCK_M`` programs, far fewer than the GPU has
SMs, if each walks all keys. The keys are split over S programs per query block; each
writes a normalised partial output and its log-sum-exp, and a small kernel combines them:
``lse = log2 sum_s 2**lse_s``, ``out = sum_s 2**(lse_s - lse) * out_s``. The dq backward
kernel is split the same way (partial sums of dq are added).

Triton is an optional GPU extra: mmcore imports this module only when a Triton kernel is
first called (see its entry in :mod:`mmcore.kernels.catalogue`). With
``TRITON_INTERPRET=1`` set before triton is imported, the kernels run on CPU tensors
(slowly); that is how they are tested.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

try:
    import triton

    from mmcore.kernels import triton_attention_kernels as kernels
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = None

#: Fill every output buffer with NaN before the kernels run, so an element a kernel fails
#: to write shows up in tests (set by tests, or MMCORE_TRITON_POISON=1).
POISON = os.environ.get("MMCORE_TRITON_POISON", "") == "1"

_LOG2E = 1.4426950408889634
_MAX_SPLITS = 128
_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@dataclass(frozen=True)
class _Config:
    """Tile sizes and launch options of one kernel launch."""

    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2


# ----------------------------------------------------------------------------- helpers
def _require_triton() -> None:
    if triton is None:
        raise ImportError("mmcore's Triton kernels need the 'triton' package "
                          "(pip install 'mmcore[gpu]')")


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def _empty(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
    """An output buffer: uninitialised, or NaN-filled when :data:`POISON` is set."""
    if POISON:
        return torch.full(tuple(shape), float("nan"), dtype=dtype, device=device)
    return torch.empty(tuple(shape), dtype=dtype, device=device)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _block_d(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))


def _block_m_for(nq: int, cap: int) -> int:
    """Query tile: ``cap``, or less (>= 16) when there are few queries."""
    return max(16, min(cap, triton.next_power_of_2(nq)))


def _precision(dtype: torch.dtype) -> str:
    """tl.dot input precision: exact float32 unless torch allows TF32 for matmuls (the
    setting only matters for float32 operands; 16-bit ones keep Triton's default)."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _dot_f32(q: Tensor) -> bool:
    """Upcast dot operands: only for bfloat16 under the CPU interpreter (see ``_mm`` in
    :mod:`mmcore.kernels.triton_attention_kernels`)."""
    return not q.is_cuda and q.dtype == torch.bfloat16


def _fallback_configs(first: _Config) -> list[_Config]:
    """``first``, then smaller tiles, tried in turn when a launch runs out of shared memory."""
    small = _Config(min(first.block_m, 32), min(first.block_n, 32), 4, 1)
    return [first] if first == small else [first, small]


def _fwd_configs(q: Tensor, nq: int) -> list[_Config]:
    """Forward tiles (not tuned on hardware yet; the second entry is the safe fallback)."""
    if not q.is_cuda:  # interpreter: small tiles, so tests cover several blocks
        return [_Config(_block_m_for(nq, 16), 32)]
    dh, wide = q.shape[-1], q.element_size() == 4
    if wide:
        first = _Config(_block_m_for(nq, 64), 32, 4, 2)
    else:
        first = _Config(_block_m_for(nq, 128), 64, 4 if dh <= 64 else 8, 3)
    return _fallback_configs(first)


def _bwd_configs(q: Tensor, nq: int) -> tuple[list[_Config], list[_Config]]:
    """(dk/dv tiles, dq tiles); the dk/dv kernel wants tall key blocks, dq tall query blocks."""
    if not q.is_cuda:
        return [_Config(16, 32)], [_Config(_block_m_for(nq, 16), 32)]
    dh, wide = q.shape[-1], q.element_size() == 4
    if wide or dh > 64:
        warps = 4 if wide else 8
        dkdv, dq = _Config(32, 64, warps, 2), _Config(_block_m_for(nq, 64), 32, warps, 2)
    else:
        dkdv, dq = _Config(32, 128, 4, 3), _Config(_block_m_for(nq, 128), 32, 4, 3)
    return _fallback_configs(dkdv), _fallback_configs(dq)


_CHOSEN_CONFIG: dict[tuple[Any, ...], _Config] = {}


def _launch(name: str, key: tuple[Any, ...], configs: list[_Config],
            launch: Callable[[_Config], None]) -> None:
    """Run ``launch`` with the first config that compiles within the GPU's resources."""
    cache_key = (name, *key, tuple(configs))
    cached = _CHOSEN_CONFIG.get(cache_key)
    if cached is not None:
        launch(cached)
        return
    for i, cfg in enumerate(configs):
        try:
            launch(cfg)
        except triton.runtime.errors.OutOfResources:
            if i == len(configs) - 1:
                raise
            continue
        _CHOSEN_CONFIG[cache_key] = cfg
        return


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors on ``device`` (a small stand-in on CPU/interpreter)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).multi_processor_count)
    return 4


def choose_num_splits(batch_heads: int, nq: int, nk: int, block_m: int, block_n: int,
                      sms: int) -> int:
    """How many key splits keep ~2 waves of programs on ``sms`` SMs, with each split still
    walking at least 4 key blocks (so the combine step stays cheap)."""
    programs = batch_heads * _cdiv(nq, block_m)
    if programs >= sms:
        return 1
    wanted = _cdiv(2 * sms, programs)
    return max(1, min(wanted, _cdiv(nk, 4 * block_n), _MAX_SPLITS))


def _split_keys(nk: int, splits: int, block_n: int) -> tuple[int, int]:
    """(keys per split, a multiple of ``block_n``; the number of non-empty splits)."""
    per = _cdiv(_cdiv(nk, max(splits, 1)), block_n) * block_n
    return per, _cdiv(nk, per)


def _strides4(t: Tensor) -> tuple[int, int, int, int]:
    s = t.stride()
    return s[0], s[1], s[2], s[3]


def _mask_args(mask: Tensor | None, q: Tensor) -> tuple[Tensor, int, int]:
    """(pointer tensor, batch stride, key stride); ``q`` stands in when there is no mask."""
    if mask is None:
        return q, 0, 0
    return mask, mask.stride(0), mask.stride(1)


def _check(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be (B, H, N, Dh)")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"shape mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    if not q.dtype == k.dtype == v.dtype or q.dtype not in _SUPPORTED_DTYPES:
        raise ValueError(f"q, k, v must share one of {_SUPPORTED_DTYPES}; got "
                         f"{q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[3] > 256:
        raise ValueError(f"head dim {q.shape[3]} > 256 is not supported")
    if not (q.is_cuda or _interpreted()):
        raise ValueError("Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 for CPU)")
    if q.shape[0] * q.shape[1] > 65535:
        raise ValueError("B * H > 65535 exceeds the CUDA grid")
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (k.shape[0], k.shape[2]):
        raise ValueError(f"key_padding_mask must be (B, Nk) = {(k.shape[0], k.shape[2])}, "
                         f"got {tuple(key_padding_mask.shape)}")


# ----------------------------------------------------------------------------- launchers
def _forward(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool,
             num_splits: int | None) -> tuple[Tensor, Tensor, int]:
    """Returns (out (B, H, Nq, Dh), base-2 lse (B*H, Nq) float32, splits used).

    ``num_splits``: 1 for the plain kernel, None to choose from the shape and the GPU.
    """
    b, h, nq, dh = q.shape
    nk = k.shape[2]
    configs = _fwd_configs(q, nq)
    block_m, block_n = configs[0].block_m, configs[0].block_n
    if num_splits is None:
        num_splits = choose_num_splits(b * h, nq, nk, block_m, block_n, num_sms(q.device))
    per_split, splits = _split_keys(nk, num_splits, block_n)
    part_dtype = q.dtype if splits == 1 else torch.float32
    out_part = _empty((splits, b * h, nq, dh), part_dtype, q.device)
    lse_part = _empty((splits, b * h, nq), torch.float32, q.device)
    mask_t, smb, smn = _mask_args(mask, q)
    scale = dh ** -0.5

    def launch(cfg: _Config) -> None:
        grid = (_cdiv(nq, cfg.block_m), b * h, splits)
        kernels.attn_fwd_kernel[grid](
            q, k, v, mask_t, out_part, lse_part,
            *_strides4(q), *_strides4(k), *_strides4(v), smb, smn,
            out_part.stride(0), out_part.stride(1), out_part.stride(2),
            lse_part.stride(0), lse_part.stride(1),
            h, nq, nk, dh, per_split, nk - nq, scale * _LOG2E,
            HAS_MASK=mask is not None, CAUSAL=causal, PRECISION=_precision(q.dtype),
            DOT_F32=_dot_f32(q), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=_block_d(dh),
            num_warps=cfg.num_warps, num_stages=cfg.num_stages)

    _launch("fwd", (q.device, q.dtype, dh, causal, mask is not None), configs, launch)
    if splits == 1:
        return out_part[0].view(b, h, nq, dh), lse_part[0], 1
    out, lse = _combine(out_part, lse_part, q.dtype)
    return out.view(b, h, nq, dh), lse, splits


def _combine(out_part: Tensor, lse_part: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(S, B*H, Nq, Dh), (S, B*H, Nq) -> out (B*H, Nq, Dh) in ``dtype``, lse (B*H, Nq)."""
    splits, bh, nq, dh = out_part.shape
    out = _empty((bh, nq, dh), dtype, out_part.device)
    lse = _empty((bh, nq), torch.float32, out_part.device)
    block_m = 16 if not out_part.is_cuda else _block_m_for(nq, 64)
    grid = (_cdiv(nq, block_m), bh)
    kernels.combine_kernel[grid](
        out_part, lse_part, out, lse,
        out_part.stride(0), out_part.stride(1), out_part.stride(2),
        lse_part.stride(0), lse_part.stride(1),
        out.stride(0), out.stride(1),
        splits, nq, dh,
        BLOCK_M=block_m, BLOCK_D=_block_d(dh), num_warps=4)
    return out, lse


def _backward(do: Tensor, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, out: Tensor,
              lse: Tensor, causal: bool, splits: int) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (dq, dk, dv) from dout (B, H, Nq, Dh) and the saved lse (B*H, Nq)."""
    b, h, nq, dh = q.shape
    nk = k.shape[2]
    delta = (do.float() * out.float()).sum(-1).reshape(b * h, nq).contiguous()
    dk = _empty((b, h, nk, dh), k.dtype, k.device)
    dv = _empty((b, h, nk, dh), v.dtype, v.device)
    mask_t, smb, smn = _mask_args(mask, q)
    dkdv_cfgs, dq_cfgs = _bwd_configs(q, nq)
    common = dict(HAS_MASK=mask is not None, CAUSAL=causal, PRECISION=_precision(q.dtype),
                  DOT_F32=_dot_f32(q), BLOCK_D=_block_d(dh))
    strides = (*_strides4(q), *_strides4(k), *_strides4(v), *_strides4(do), smb, smn)
    scale = dh ** -0.5
    key = (q.device, q.dtype, dh, causal, mask is not None)

    def launch_dkdv(cfg: _Config) -> None:
        kernels.attn_bwd_dkdv_kernel[(_cdiv(nk, cfg.block_n), b * h)](
            q, k, v, mask_t, do, lse, delta, dk, dv, *strides,
            h, nq, nk, dh, nk - nq, scale * _LOG2E, scale,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages, **common)

    per_split, splits = _split_keys(nk, splits, dq_cfgs[0].block_n)
    dq_part = _empty((splits, b * h, nq, dh), q.dtype if splits == 1 else torch.float32,
                     q.device)

    def launch_dq(cfg: _Config) -> None:
        kernels.attn_bwd_dq_kernel[(_cdiv(nq, cfg.block_m), b * h, splits)](
            q, k, v, mask_t, do, lse, delta, dq_part, *strides, dq_part.stride(0),
            h, nq, nk, dh, per_split, nk - nq, scale * _LOG2E, scale,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages, **common)

    _launch("bwd_dkdv", key, dkdv_cfgs, launch_dkdv)
    _launch("bwd_dq", key, dq_cfgs, launch_dq)
    dq = dq_part[0] if splits == 1 else dq_part.sum(0).to(q.dtype)
    return dq.view(b, h, nq, dh), dk, dv


def _on_device(t: Tensor) -> contextlib.AbstractContextManager[Any]:
    """Launch on ``t``'s GPU (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


class _FlashAttention(torch.autograd.Function):
    """Autograd wrapper: forward saves (q, k, v, mask, out, lse); backward recomputes."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                causal: bool, num_splits: int | None) -> Tensor:
        with _on_device(q):
            out, lse, splits = _forward(q, k, v, mask, causal, num_splits)
        ctx.save_for_backward(q, k, v, mask, out, lse)
        ctx.causal, ctx.splits = causal, splits
        return out

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, mask, out, lse = ctx.saved_tensors
        with _on_device(q):
            dq, dk, dv = _backward(grads[0], q, k, v, mask, out, lse, ctx.causal, ctx.splits)
        return dq, dk, dv, None, None, None


def _run(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None, causal: bool,
         num_splits: int | None) -> Tensor:
    _require_triton()
    _check(q, k, v, key_padding_mask)
    if q.shape[2] == 0 or k.shape[2] == 0:
        from mmcore.kernels.attention import reference_attention

        return reference_attention(q, k, v, key_padding_mask, causal)
    mask = None if key_padding_mask is None else key_padding_mask.to(torch.int8)
    out: Tensor = _FlashAttention.apply(q, k, v, mask, causal, num_splits)
    return out


# ----------------------------------------------------------------------------- public API
def triton_attention(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None,
                     causal: bool = False) -> Tensor:
    """Flash attention, one program per (query block, batch*head), differentiable.

    q: (B, H, Nq, Dh), k/v: (B, H, Nk, Dh), key_padding_mask: (B, Nk) bool (True = real key);
    fp16/bf16/fp32, Dh <= 256. Returns (B, H, Nq, Dh) in q's dtype.
    """
    return _run(q, k, v, key_padding_mask, causal, 1)


def triton_cross_attention(q: Tensor, k: Tensor, v: Tensor,
                           key_padding_mask: Tensor | None = None, causal: bool = False,
                           num_splits: int | None = None) -> Tensor:
    """Split-K flash attention for few queries over many keys, differentiable.

    Same shapes as :func:`triton_attention`. ``num_splits`` (default: chosen from the shape
    and the GPU's SM count) splits the keys over that many programs per query block; their
    partial softmaxes are merged by a second kernel. With many queries it picks 1 split.
    """
    if num_splits is not None and num_splits < 1:
        raise ValueError(f"num_splits must be >= 1, got {num_splits}")
    return _run(q, k, v, key_padding_mask, causal, num_splits)


def flops(b: int, h: int, nq: int, nk: int, dh: int, causal: bool = False,
          with_backward: bool = False) -> float:
    """Matmul FLOPs: 2 matmuls forward; forward+backward counts 3.5x (backward = 2.5x
    forward, as in the FlashAttention papers). Causal counts only the allowed pairs."""
    f = 4.0 * b * h * nq * nk * dh
    if causal:
        f *= 1.0 - nq / (2.0 * nk) if nq <= nk else nk / (2.0 * nq)
    return f * 3.5 if with_backward else f


__all__ = ["POISON", "choose_num_splits", "flops", "num_sms", "triton_attention",
           "triton_cross_attention"]

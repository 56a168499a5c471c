"""Triton flash attention (forward, backward, split-K) under TRITON_INTERPRET=1 against a
float64 reference written here; xformers wrapper logic; dispatch on simulated hardware.

Every random test draws a fresh seed and prints it; rerun one with MMCORE_TEST_SEED=<seed>.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported anywhere in this process

import importlib.util
import subprocess
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor

from mmcore.kernels import Hardware, KernelError, KernelSet, select_kernels

HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")

if HAS_TRITON:
    from mmcore.kernels import triton_attention as ta


# ----------------------------------------------------------------------------- helpers
def _generator() -> torch.Generator:
    seed = int(os.environ.get("MMCORE_TEST_SEED") or int.from_bytes(os.urandom(4), "little"))
    print(f"seed={seed} (rerun with MMCORE_TEST_SEED={seed})")
    return torch.Generator().manual_seed(seed)


def _allowed(b: int, nq: int, nk: int, mask: Tensor | None, causal: bool) -> Tensor:
    """(B, 1, Nq, Nk) bool: which query may see which key."""
    allowed = torch.ones(b, 1, nq, nk, dtype=torch.bool)
    if mask is not None:
        allowed &= mask[:, None, None, :]
    if causal:
        allowed &= torch.ones(nq, nk, dtype=torch.bool).tril(nk - nq)
    return allowed


def ref_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None,
                  causal: bool = False) -> Tensor:
    """Float64 softmax attention; rows with no allowed key give zeros (and zero grads)."""
    q, k, v = q.double(), k.double(), v.double()
    allowed = _allowed(q.shape[0], q.shape[2], k.shape[2], mask, causal)
    s = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    s = s.masked_fill(~allowed, float("-inf"))
    m = s.amax(-1, keepdim=True).detach()
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    p = torch.exp(s - m)
    denom = p.sum(-1, keepdim=True)
    p = p / torch.where(denom == 0, torch.ones_like(denom), denom)
    return p @ v


def _inputs(gen: torch.Generator, b: int, h: int, nq: int, nk: int, dh: int,
            dtype: torch.dtype = torch.float32, layout: str = "bhnd"
            ) -> tuple[Tensor, Tensor, Tensor]:
    """q (B, H, Nq, Dh), k, v (B, H, Nk, Dh); ``bnhd`` gives non-contiguous transposed views."""
    def make(n: int) -> Tensor:
        if layout == "bnhd":
            x = torch.randn(b, n, h, dh, generator=gen).to(dtype).transpose(1, 2)
        else:
            x = torch.randn(b, h, n, dh, generator=gen).to(dtype)
        return x.requires_grad_(True)
    return make(nq), make(nk), make(nk)


def _padding_mask(gen: torch.Generator, b: int, nk: int, empty_row: bool) -> Tensor:
    """(B, Nk) bool with random lengths; batch 0 fully masked when ``empty_row``."""
    lengths = torch.randint(1, nk + 1, (b,), generator=gen)
    if empty_row:
        lengths[0] = 0
    return torch.arange(nk)[None, :] < lengths[:, None]


@pytest.fixture(autouse=True)
def _poison(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """NaN-fill every kernel output buffer, so unwritten elements show up."""
    if HAS_TRITON:
        monkeypatch.setattr(ta, "POISON", True)
    yield


def _ref_fwd_bwd(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool,
                 dout: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Float64 reference output and (dq, dk, dv) for upstream gradient ``dout``."""
    leaves = [x.detach().double().requires_grad_(True) for x in (q, k, v)]
    expected = ref_attention(*leaves, mask, causal)
    return expected.detach(), torch.autograd.grad(expected, leaves, dout.double())


def _check_fwd_bwd(out: Tensor, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                   causal: bool, gen: torch.Generator, tol: float = 1e-4) -> None:
    dout = torch.randn(out.shape, generator=gen)
    expected, ref_grads = _ref_fwd_bwd(q, k, v, mask, causal, dout)
    assert not torch.isnan(out).any(), "unwritten (NaN) output elements"
    torch.testing.assert_close(out.double(), expected, atol=tol, rtol=tol)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    for name, got, want in zip("qkv", grads, ref_grads, strict=True):
        assert not torch.isnan(got).any(), f"d{name} has NaN"
        torch.testing.assert_close(got.double(), want.double(), atol=tol, rtol=tol,
                                   msg=lambda m, n=name: f"d{n}: {m}")
    if mask is not None and not mask[0].any():
        assert (out[0] == 0).all(), "a query with no key must output zeros"
        assert (grads[0][0] == 0).all()


# ----------------------------------------------------------------------------- kernels
CASES = [  # b, h, nq, nk, dh, causal, masked, layout
    pytest.param(2, 2, 3, 127, 32, False, False, "bhnd", id="few-queries-odd-keys"),
    pytest.param(1, 1, 17, 17, 64, True, False, "bhnd", id="causal-square"),
    pytest.param(2, 2, 19, 40, 48, True, True, "bhnd", id="causal-nq<nk-mask-dh48"),
    pytest.param(1, 2, 33, 20, 128, True, False, "bhnd", id="causal-nq>nk-empty-rows-dh128"),
    pytest.param(3, 2, 9, 50, 80, False, True, "bnhd", id="mask-dh80-noncontiguous"),
]


@needs_triton
@pytest.mark.parametrize(("b", "h", "nq", "nk", "dh", "causal", "masked", "layout"), CASES)
def test_forward_backward_fp32(b: int, h: int, nq: int, nk: int, dh: int, causal: bool,
                               masked: bool, layout: str) -> None:
    gen = _generator()
    q, k, v = _inputs(gen, b, h, nq, nk, dh, layout=layout)
    mask = _padding_mask(gen, b, nk, empty_row=True) if masked else None
    out = ta.triton_attention(q, k, v, key_padding_mask=mask, causal=causal)
    assert out.shape == (b, h, nq, dh) and out.dtype == torch.float32
    _check_fwd_bwd(out, q, k, v, mask, causal, gen)


SPLIT_CASES = [  # b, h, nq, nk, dh, causal, masked, splits
    pytest.param(2, 2, 5, 300, 32, False, True, 3, id="3-splits-mask"),
    pytest.param(1, 2, 20, 257, 64, False, False, 7, id="7-splits-uneven"),
    pytest.param(2, 1, 6, 150, 32, True, True, 4, id="4-splits-causal-mask"),
    pytest.param(1, 1, 40, 30, 32, True, False, 2, id="2-splits-causal-empty-rows"),
    pytest.param(2, 2, 4, 200, 32, False, True, None, id="auto-splits"),
]


@needs_triton
@pytest.mark.parametrize(("b", "h", "nq", "nk", "dh", "causal", "masked", "splits"),
                         SPLIT_CASES)
def test_split_k_forward_backward(b: int, h: int, nq: int, nk: int, dh: int, causal: bool,
                                  masked: bool, splits: int | None) -> None:
    gen = _generator()
    q, k, v = _inputs(gen, b, h, nq, nk, dh)
    mask = _padding_mask(gen, b, nk, empty_row=True) if masked else None
    if mask is not None:  # batch 1 keeps only a few keys: the later splits see none
        mask[1] = torch.arange(nk) < 7
    out = ta.triton_cross_attention(q, k, v, key_padding_mask=mask, causal=causal,
                                    num_splits=splits)
    _check_fwd_bwd(out, q, k, v, mask, causal, gen)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("split", [False, True])
def test_low_precision_forward(dtype: torch.dtype, split: bool) -> None:
    gen = _generator()
    b, h, nq, nk, dh = 2, 2, 20, 70, 64
    q, k, v = _inputs(gen, b, h, nq, nk, dh, dtype=dtype)
    mask = _padding_mask(gen, b, nk, empty_row=True)
    with torch.no_grad():
        if split:
            out = ta.triton_cross_attention(q, k, v, mask, causal=True, num_splits=3)
        else:
            out = ta.triton_attention(q, k, v, mask, causal=True)
    assert out.dtype == dtype and not torch.isnan(out).any()
    tol = 1e-2 if dtype == torch.float16 else 3e-2
    torch.testing.assert_close(out.double(), ref_attention(q, k, v, mask, True),
                               atol=tol, rtol=tol)
    assert (out[0] == 0).all()


@needs_triton
def test_low_precision_backward_runs() -> None:
    """bf16 gradients: finite and close to float64 at a loose tolerance."""
    gen = _generator()
    q, k, v = _inputs(gen, 1, 2, 16, 40, 32, dtype=torch.bfloat16)
    out = ta.triton_attention(q, k, v, causal=True)
    dout = torch.randn(out.shape, generator=gen).to(torch.bfloat16)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    _, ref_grads = _ref_fwd_bwd(q, k, v, None, True, dout)
    for got, want in zip(grads, ref_grads, strict=True):
        assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
        torch.testing.assert_close(got.double(), want, atol=1e-1, rtol=1e-1)


@needs_triton
def test_through_dispatch_and_fallback() -> None:
    """The lazily imported dispatch wrappers reach the kernels; fp64 falls back."""
    gen = _generator()
    q, k, v = _inputs(gen, 1, 2, 5, 40, 32)
    kernels = KernelSet({"attention": "triton", "cross_attention": "triton"})
    for out in (kernels.attention(q, k, v), kernels.cross_attention(q, k, v)):
        torch.testing.assert_close(out.double(), ref_attention(q, k, v), atol=1e-4, rtol=1e-4)
    q64 = q.detach().double()  # dtype not accepted: reference runs instead
    k64, v64 = k.detach().double(), v.detach().double()
    torch.testing.assert_close(kernels.attention(q64, k64, v64), ref_attention(q64, k64, v64))


@needs_triton
def test_input_validation() -> None:
    q = torch.randn(1, 1, 4, 32)
    with pytest.raises(ValueError, match="shape"):
        ta.triton_attention(q, torch.randn(1, 1, 5, 16), torch.randn(1, 1, 5, 16))
    with pytest.raises(ValueError, match="key_padding_mask"):
        ta.triton_attention(q, q, q, key_padding_mask=torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="num_splits"):
        ta.triton_cross_attention(q, q, q, num_splits=0)


@needs_triton
def test_choose_num_splits() -> None:
    # a full grid needs no split
    assert ta.choose_num_splits(64 * 8, 4096, 4096, 128, 64, 132) == 1
    # 256 latents over 50k keys, 8 heads: ~2 waves on 132 SMs
    s = ta.choose_num_splits(8, 256, 50_000, 128, 64, 132)
    assert 8 < s <= 128
    per, n = ta._split_keys(50_000, s, 64)
    assert per % 64 == 0 and (n - 1) * per < 50_000 <= n * per
    # few keys: at least 4 key blocks per split
    assert ta.choose_num_splits(1, 16, 300, 16, 64, 132) == 2


def test_flops_counts() -> None:
    from mmcore.kernels.triton_attention import flops

    assert flops(1, 1, 4, 4, 8) == 4 * 4 * 4 * 8
    assert flops(1, 1, 4, 4, 8, causal=True) == 0.5 * flops(1, 1, 4, 4, 8)
    assert flops(1, 1, 4, 4, 8, with_backward=True) == 3.5 * flops(1, 1, 4, 4, 8)


def test_importing_mmcore_does_not_import_kernels() -> None:
    code = ("import sys, mmcore, mmcore.kernels; "
            "assert 'mmcore.kernels.triton_attention' not in sys.modules; "
            "assert 'mmcore.kernels.xformers_attention' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- xformers
def _fake_xformers(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Install a pure-torch stand-in for ``xformers.ops`` (layout (B, N, H, Dh)); returns
    the list of attn_bias values it was called with."""
    seen: list[Any] = []

    class LowerTriangularMask:
        pass

    def memory_efficient_attention(q: Tensor, k: Tensor, v: Tensor,
                                   attn_bias: Any = None) -> Tensor:
        seen.append(attn_bias)
        q, k, v = (x.transpose(1, 2).double() for x in (q, k, v))  # (B, H, N, Dh)
        s = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
        if isinstance(attn_bias, LowerTriangularMask):
            tri = torch.ones(s.shape[-2:], dtype=torch.bool).tril()
            s = s.masked_fill(~tri, float("-inf"))
        elif attn_bias is not None:
            assert attn_bias.stride(-2) % 8 == 0, "xformers wants aligned bias rows"
            s = s + attn_bias.double()
        return (s.softmax(-1) @ v).transpose(1, 2).float()

    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = memory_efficient_attention  # type: ignore[attr-defined]
    ops.LowerTriangularMask = LowerTriangularMask  # type: ignore[attr-defined]
    pkg = types.ModuleType("xformers")
    pkg.ops = ops  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "xformers", pkg)
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)
    return seen


@pytest.mark.parametrize(("nq", "nk", "causal", "masked"), [
    (6, 6, True, False), (3, 13, False, True), (9, 5, True, True), (4, 4, False, False)])
def test_xformers_wrapper_masks(monkeypatch: pytest.MonkeyPatch, nq: int, nk: int,
                                causal: bool, masked: bool) -> None:
    from mmcore.kernels.xformers_attention import xformers_attention

    seen = _fake_xformers(monkeypatch)
    gen = _generator()
    q, k, v = (x.detach() for x in _inputs(gen, 2, 3, nq, nk, 16))
    mask = _padding_mask(gen, 2, nk, empty_row=True) if masked else None
    out = xformers_attention(q, k, v, key_padding_mask=mask, causal=causal)
    assert out.shape == (2, 3, nq, 16)
    torch.testing.assert_close(out.double(), ref_attention(q, k, v, mask, causal),
                               atol=1e-5, rtol=1e-5)
    if causal and not masked and nq == nk:
        assert type(seen[0]).__name__ == "LowerTriangularMask"


# ----------------------------------------------------------------------------- dispatch
# Unmeasured GPU candidates are never chosen automatically (issue 15): sdpa stays the
# default until docs/performance.md records a GPU benchmark where they beat it.
def test_dispatch_a100_with_triton() -> None:
    ks = select_kernels(hardware=Hardware("cuda", (8, 0), "A100", frozenset({"triton"})))
    assert ks.choices["cross_attention"] == "sdpa"
    assert ks.choices["attention"] == "sdpa"


def test_dispatch_h100_with_triton_and_xformers() -> None:
    hw = Hardware("cuda", (9, 0), "H100", frozenset({"triton", "xformers"}))
    ks = select_kernels(hardware=hw)
    assert ks.choices["cross_attention"] == "sdpa"
    assert ks.choices["attention"] == "sdpa"
    assert select_kernels({"cross_attention": "triton"}, hw).choices["cross_attention"] == "triton"


def test_dispatch_v100_keeps_sdpa_for_cross_attention() -> None:
    hw = Hardware("cuda", (7, 0), "V100", frozenset({"triton", "xformers"}))
    ks = select_kernels(hardware=hw)
    assert ks.choices["cross_attention"] == "sdpa"  # xformers is unmeasured
    assert ks.choices["attention"] == "sdpa"


def test_dispatch_cpu_picks_sdpa() -> None:
    hw = Hardware("cpu", None, "cpu", frozenset({"triton", "xformers"}))
    ks = select_kernels(hardware=hw)
    assert ks.choices["attention"] == "sdpa" and ks.choices["cross_attention"] == "sdpa"


@pytest.mark.parametrize("op", ["attention", "cross_attention"])
def test_forcing_triton_on_cpu_raises(op: str) -> None:
    with pytest.raises(KernelError, match="cannot run"):
        select_kernels({op: "triton"}, hardware=Hardware("cpu", None, "cpu",
                                                         frozenset({"triton"})))


def test_forcing_xformers_without_package_raises() -> None:
    hw = Hardware("cuda", (9, 0), "H100", frozenset({"triton"}))
    with pytest.raises(KernelError, match="xformers"):
        select_kernels({"attention": "xformers"}, hardware=hw)


def test_triton_candidate_accepts() -> None:
    ks = KernelSet({"cross_attention": "triton"})
    cand = ks.candidate("cross_attention")
    assert cand.accepts(torch.empty(1, 1, 1, 64, dtype=torch.bfloat16))
    assert not cand.accepts(torch.empty(1, 1, 1, 256))  # head dim beyond 128
    assert not cand.accepts(torch.empty(1, 1, 1, 64, dtype=torch.float64))

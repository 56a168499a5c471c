"""Padding masks in attention: no mask when nothing is padded, the chunked (flash-style)
path against a float64 reference, padding that never reaches real tokens, and kernel
defaults that follow measurements."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from mmcore.kernels import Hardware, select_kernels
from mmcore.kernels import attention as attn
from mmcore.kernels.attention import chunked_attention, real_padding, sdpa_attention
from mmcore.kernels.dispatch import explain
from mmcore.layers import TransformerStack

CPU_KERNELS = select_kernels(None, Hardware())
FP32_TOL = {"atol": 2e-5, "rtol": 2e-5}


def reference64(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
    """softmax(q k^T / sqrt(d)) v in float64 with an explicit (B, 1, Nq, Nk) mask."""
    q, k, v = q.double(), k.double(), v.double()
    scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    nq, nk = q.shape[2], k.shape[2]
    allowed = torch.ones(q.shape[0], 1, nq, nk, dtype=torch.bool)
    if mask is not None:
        allowed = allowed & mask[:, None, None, :]
    if causal:
        allowed = allowed & torch.ones(nq, nk, dtype=torch.bool).tril(nk - nq)
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1).nan_to_num(0.0)
    return probs @ v


def padded_inputs(b: int, h: int, nq: int, nk: int, d: int, seed: int = 0,
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=g) for n in (nq, nk, nk))
    lengths = torch.tensor([nk, nk - 5, 1][:b])
    mask = torch.arange(nk)[None, :] < lengths[:, None]  # (B, Nk)
    return q, k, v, mask


def test_real_padding_drops_an_all_true_mask() -> None:
    assert real_padding(None) is None
    assert real_padding(torch.ones(2, 5, dtype=torch.bool)) is None
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, -1] = False
    assert real_padding(mask) is mask


@pytest.mark.parametrize("causal", [False, True])
def test_all_true_mask_and_no_mask_give_identical_outputs(causal: bool) -> None:
    torch.manual_seed(0)
    stack = TransformerStack(width=24, layers=2, heads=3, kernels=CPU_KERNELS).eval()
    x = torch.randn(2, 13, 24)
    with torch.no_grad():
        plain = stack(x, None, causal)
        masked = stack(x, torch.ones(2, 13, dtype=torch.bool), causal)
    assert torch.equal(plain, masked)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("nq", "nk"), [(37, 37), (5, 53), (29, 11)])
def test_chunked_attention_matches_float64(causal: bool, nq: int, nk: int) -> None:
    q, k, v, mask = padded_inputs(3, 3, nq, nk, 12)
    got = chunked_attention(q, k, v, mask, causal, block_q=8, block_k=7)
    torch.testing.assert_close(got.double(), reference64(q, k, v, mask, causal), **FP32_TOL)


def test_chunked_attention_gradients_match_float64() -> None:
    q, k, v, mask = padded_inputs(2, 2, 19, 23, 8, seed=1)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    leaves64 = [t.double().clone().requires_grad_() for t in (q, k, v)]
    weight = torch.randn(2, 2, 19, 8)
    (chunked_attention(*leaves, mask, True, block_q=6, block_k=5) * weight).sum().backward()
    (reference64(*leaves64, mask, True) * weight.double()).sum().backward()
    for got, want in zip(leaves, leaves64, strict=True):
        assert got.grad is not None and want.grad is not None
        torch.testing.assert_close(got.grad.double(), want.grad, **FP32_TOL)


def test_long_masked_causal_sdpa_takes_the_chunked_path(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """Causal + padding would need an (Nq, Nk) mask; past CHUNK_PAIRS it runs chunked."""
    monkeypatch.setattr(attn, "CHUNK_PAIRS", 100)
    monkeypatch.setattr(attn, "BLOCK_Q", 8)
    monkeypatch.setattr(attn, "BLOCK_K", 8)
    calls: list[int] = []
    real = attn.chunked_attention
    monkeypatch.setattr(attn, "chunked_attention", lambda *a, **kw: calls.append(1) or real(*a))
    q, k, v, mask = padded_inputs(3, 2, 31, 31, 8)
    got = sdpa_attention(q, k, v, mask, causal=True)
    assert calls
    want = reference64(q, k, v, mask, True)
    real_rows = mask[:, None, :, None].expand_as(want)  # padded queries are don't-cares
    torch.testing.assert_close(got.double()[real_rows], want[real_rows], **FP32_TOL)


def _stack_outputs(stack: TransformerStack, x: Tensor, mask: Tensor, causal: bool) -> Tensor:
    with torch.no_grad():
        return stack(x, mask, causal)


@pytest.mark.parametrize("kernel", ["sdpa", "reference-chunked"])
@pytest.mark.parametrize("causal", [False, True])
def test_padding_never_changes_real_outputs(kernel: str, causal: bool,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    if kernel == "reference-chunked":  # force the chunked path at this small size
        monkeypatch.setattr(attn, "CHUNK_PAIRS", 16)
        monkeypatch.setattr(attn, "BLOCK_Q", 4)
        monkeypatch.setattr(attn, "BLOCK_K", 3)
    kernels = select_kernels({"attention": "sdpa" if kernel == "sdpa" else "reference"},
                             Hardware())
    torch.manual_seed(0)
    stack = TransformerStack(width=16, layers=2, heads=2, kernels=kernels).eval()
    x, mask = torch.randn(3, 11, 16), torch.ones(3, 11, dtype=torch.bool)
    mask[0, 7:], mask[2, 4:] = False, False
    # a random, non-constant perturbation of the padding only (no LayerNorm/softmax shift
    # can erase it)
    noise = torch.randn(3, 11, 16) * 5 * (~mask)[..., None]
    before = _stack_outputs(stack, x, mask, causal)
    after = _stack_outputs(stack, x + noise, mask, causal)
    assert not torch.allclose(before[~mask], after[~mask])  # the padding did change
    torch.testing.assert_close(after[mask], before[mask], atol=1e-5, rtol=1e-5)


# -- kernel defaults follow measurements -------------------------------------------------


def test_unmeasured_gpu_kernels_are_not_chosen_automatically() -> None:
    hopper = Hardware("cuda", (9, 0), "H100", frozenset({"triton", "xformers"}))
    choices = select_kernels(None, hopper).choices
    assert choices["attention"] == choices["cross_attention"] == "sdpa"
    assert choices["contrastive_loss"] == "chunked"
    rows = {(r["op"], r["candidate"]): r for r in explain(hopper)}
    why = rows[("cross_attention", "triton")]
    assert why["status"] == "available"
    assert why["reason"].startswith("not chosen automatically: no recorded GPU benchmark "
                                    "beats sdpa (docs/performance.md)")
    assert "MMCORE_KERNEL_CROSS_ATTENTION=triton" in why["reason"]
    assert rows[("attention", "xformers")]["reason"].startswith("not chosen automatically")


def test_forcing_an_unmeasured_kernel_still_works() -> None:
    hopper = Hardware("cuda", (9, 0), "H100", frozenset({"triton", "xformers"}))
    forced = select_kernels({"cross_attention": "triton", "attention": "xformers"}, hopper)
    assert forced.choices["cross_attention"] == "triton"
    assert forced.choices["attention"] == "xformers"

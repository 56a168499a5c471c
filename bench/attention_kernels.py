"""Attention kernels side by side: TFLOP/s, peak memory and error against the reference.

Shapes (``--device cuda``, bf16): latent cross-attention, 256 queries over 16k and 50k keys,
8 heads, head dim 64; self-attention over 4k tokens with head dim 64 and 128. Each is run
forward and forward+backward by: torch SDPA with each backend forced (flash, efficient,
math; an unavailable one reports its error), xformers (if installed), naive materialised
attention, mmcore's float32 reference, and the Triton kernels (plain and split-K). On CPU
(the default) tiny float32 shapes and only the torch paths run, in well under a minute.
Then the contrastive-loss bench runs, if ``bench/contrastive_bench.py`` is present.

    python bench/attention_kernels.py [--device cuda] [--mask] [--iters 20] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mmcore.kernels.attention import reference_attention, sdpa_attention

AttnFn = Callable[[Tensor, Tensor, Tensor, "Tensor | None", bool], Tensor]


@dataclass(frozen=True)
class Shape:
    """One benchmark problem: q (b, h, nq, dh) over k, v (b, h, nk, dh)."""

    name: str
    b: int
    h: int
    nq: int
    nk: int
    dh: int
    causal: bool = False
    cross: bool = False  # few queries over many keys: the split-K kernel applies


def cuda_shapes(batch: int) -> list[Shape]:
    return [
        Shape("latent-x-attn 256x16k", batch, 8, 256, 16_384, 64, cross=True),
        Shape("latent-x-attn 256x50k", batch, 8, 256, 50_000, 64, cross=True),
        Shape("self-attn 4k dh64", batch, 16, 4096, 4096, 64),
        Shape("self-attn 4k dh128", batch, 8, 4096, 4096, 128),
        Shape("self-attn 4k dh64 causal", batch, 16, 4096, 4096, 64, causal=True),
    ]


def cpu_shapes() -> list[Shape]:
    return [
        Shape("latent-x-attn 32x2k (tiny)", 1, 4, 32, 2048, 32, cross=True),
        Shape("self-attn 256 dh32 (tiny)", 1, 4, 256, 256, 32),
        Shape("self-attn 256 dh64 causal (tiny)", 1, 4, 256, 256, 64, causal=True),
    ]


# ----------------------------------------------------------------------------- candidates
def naive_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                    causal: bool) -> Tensor:
    """Materialised (B, H, Nq, Nk) scores in the input dtype."""
    s = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if causal:
        nq, nk = q.shape[2], k.shape[2]
        tri = torch.ones(nq, nk, dtype=torch.bool, device=q.device).tril(nk - nq)
        s = s.masked_fill(~tri, float("-inf"))
    if mask is not None:
        s = s.masked_fill(~mask[:, None, None, :], float("-inf"))
    return torch.softmax(s, dim=-1).nan_to_num(0.0) @ v


def _sdpa_forced(backend: Any) -> AttnFn:
    from torch.nn.attention import sdpa_kernel

    def run(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
        with sdpa_kernel([backend]):
            if mask is None and (not causal or q.shape[2] == k.shape[2]):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            return sdpa_attention(q, k, v, mask, causal)
    return run


def candidates(device: str) -> dict[str, AttnFn]:
    """Everything that can be tried on ``device`` (failures are reported per run)."""
    from torch.nn.attention import SDPBackend

    cands: dict[str, AttnFn] = {
        "sdpa-flash": _sdpa_forced(SDPBackend.FLASH_ATTENTION),
        "sdpa-efficient": _sdpa_forced(SDPBackend.EFFICIENT_ATTENTION),
        "sdpa-math": _sdpa_forced(SDPBackend.MATH),
        "naive": naive_attention,
        "reference": lambda q, k, v, m, c: reference_attention(q, k, v, m, c),
    }
    if device != "cuda":
        return cands
    if importlib.util.find_spec("xformers") is not None:
        from mmcore.kernels.xformers_attention import xformers_attention

        cands["xformers"] = lambda q, k, v, m, c: xformers_attention(q, k, v, m, c)
    if importlib.util.find_spec("triton") is not None:
        from mmcore.kernels.triton_attention import triton_attention, triton_cross_attention

        cands["triton"] = lambda q, k, v, m, c: triton_attention(q, k, v, m, c)
        cands["triton-splitk"] = lambda q, k, v, m, c: triton_cross_attention(q, k, v, m, c)
    return cands


# ----------------------------------------------------------------------------- measuring
@dataclass
class Row:
    shape: str
    pass_: str  # "fwd" or "fwd+bwd"
    candidate: str
    ms: float | None = None
    tflops: float | None = None
    peak_mib: float | None = None
    max_err: float | None = None
    error: str | None = None


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time_ms(fn: Callable[[], Any], device: str, warmup: int, iters: int) -> float:
    """Median milliseconds of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


@contextlib.contextmanager
def _peak_mib(device: str, out: dict[str, float | None]) -> Iterator[None]:
    """Peak memory (MiB) allocated above what was live on entry; None on CPU."""
    if device != "cuda":
        out["peak"] = None
        yield
        return
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    yield
    torch.cuda.synchronize()
    out["peak"] = (torch.cuda.max_memory_allocated() - base) / 2**20


def make_inputs(s: Shape, dtype: torch.dtype, device: str, masked: bool
                ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(s.b, s.h, n, s.dh, device=device, dtype=dtype, generator=gen)
               for n in (s.nq, s.nk, s.nk))
    mask = None
    if masked:  # each sample keeps 60..100% of its keys
        lengths = (torch.rand(s.b, device=device, generator=gen) * 0.4 + 0.6) * s.nk
        mask = torch.arange(s.nk, device=device)[None, :] < lengths.long().clamp(min=1)[:, None]
    return q, k, v, mask


def _flops(s: Shape, backward: bool) -> float:
    from mmcore.kernels.triton_attention import flops

    return flops(s.b, s.h, s.nq, s.nk, s.dh, s.causal, with_backward=backward)


def _reference(s: Shape, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
               dout: Tensor) -> tuple[Tensor, list[Tensor]]:
    """float32 reference output and grads (dq, dk, dv), to report each candidate's error."""
    leaves = [x.detach().float().requires_grad_(True) for x in (q, k, v)]
    out = reference_attention(*leaves, key_padding_mask=mask, causal=s.causal)
    grads = torch.autograd.grad(out, leaves, dout.float())
    return out.detach(), list(grads)


def bench_one(s: Shape, name: str, fn: AttnFn, inputs: tuple[Tensor, ...],
              ref: tuple[Tensor, list[Tensor]], args: argparse.Namespace) -> list[Row]:
    """Forward and forward+backward rows of one candidate on one shape."""
    q, k, v, mask, dout = inputs
    rows = []
    for backward in (False, True):
        row = Row(s.name, "fwd+bwd" if backward else "fwd", name)
        try:
            _measure(row, s, fn, (q, k, v, mask, dout), ref, backward, args)
        except Exception as e:  # one failing candidate must not stop the rest
            row.error = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            if args.device == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
        print(_format(row), flush=True)
    return rows


def _measure(row: Row, s: Shape, fn: AttnFn, inputs: tuple[Any, ...],
             ref: tuple[Tensor, list[Tensor]], backward: bool,
             args: argparse.Namespace) -> None:
    q, k, v, mask, dout = inputs
    leaves = [x.detach().requires_grad_(backward) for x in (q, k, v)]

    def step() -> Tensor:
        out = fn(*leaves, mask, s.causal)
        if backward:
            torch.autograd.grad(out, leaves, dout)
        return out

    with torch.set_grad_enabled(backward):
        peak: dict[str, float | None] = {}
        with _peak_mib(args.device, peak):
            out = fn(*leaves, mask, s.causal)
            grads = torch.autograd.grad(out, leaves, dout) if backward else ()
        errs = [(out.float() - ref[0]).abs().max().item()]
        if backward:
            errs += [(g.float() - r).abs().max().item() for g, r in zip(grads, ref[1], strict=True)]
        del out, grads
        row.ms = _time_ms(step, args.device, args.warmup, args.iters)
    row.peak_mib, row.max_err = peak["peak"], max(errs)
    row.tflops = _flops(s, backward) / (row.ms * 1e-3) / 1e12


def _format(row: Row) -> str:
    head = f"  {row.pass_:8s} {row.candidate:15s}"
    if row.error:
        return f"{head} FAILED {row.error}"
    peak = "-" if row.peak_mib is None else f"{row.peak_mib:9.1f}"
    return (f"{head} {row.ms:9.3f} ms {row.tflops:8.3f} TFLOP/s  peak {peak} MiB  "
            f"max err {row.max_err:.2e}")


# ----------------------------------------------------------------------------- contrastive
def _contrastive_bench() -> Callable[..., list[dict[str, Any]]] | None:
    """``run_contrastive_bench`` from bench/contrastive_bench.py, or None if absent."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        from contrastive_bench import run_contrastive_bench  # type: ignore[import-not-found]
    except ImportError as e:
        print(f"contrastive bench not run: {e}")
        return None
    finally:
        sys.path.pop(0)
    fn: Callable[..., list[dict[str, Any]]] = run_contrastive_bench
    return fn


def run_contrastive(device: str) -> list[dict[str, Any]]:
    fn = _contrastive_bench()
    if fn is None:
        return []
    sizes, dim = ([4096, 16_384, 32_768], 512) if device == "cuda" else ([128, 512], 64)
    print(f"\n== contrastive loss (device {device}, sizes {sizes}, dim {dim})")
    try:
        rows = fn(device=device, sizes=sizes, dim=dim)
    except Exception as e:  # report, keep the attention results
        print(f"contrastive bench failed: {type(e).__name__}: {e}")
        return [{"error": f"{type(e).__name__}: {e}"}]
    for r in rows:
        print("  " + "  ".join(f"{k}={v}" for k, v in r.items()))
    return rows


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch", type=int, default=4, help="batch size of the cuda shapes")
    p.add_argument("--mask", action="store_true", help="add a key padding mask (60-100%% kept)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls (cuda 5, cpu 1)")
    p.add_argument("--iters", type=int, default=None, help="timed calls (cuda 20, cpu 3)")
    p.add_argument("--only", default="", help="comma-separated candidate names to run")
    p.add_argument("--no-contrastive", action="store_true")
    p.add_argument("--json", type=Path, default=None, help="write all results here")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no GPU")
    cuda = args.device == "cuda"
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    args.iters = args.iters if args.iters is not None else (20 if cuda else 3)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cuda = args.device == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    shapes = cuda_shapes(args.batch) if cuda else cpu_shapes()
    cands = candidates(args.device)
    if args.only:
        cands = {n: f for n, f in cands.items() if n in args.only.split(",")}
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    print(f"device {device_name}, dtype {dtype}, mask {args.mask}, torch {torch.__version__}")
    rows: list[Row] = []
    for s in shapes:
        print(f"\n== {s.name}: B={s.b} H={s.h} Nq={s.nq} Nk={s.nk} Dh={s.dh} causal={s.causal}")
        q, k, v, mask = make_inputs(s, dtype, args.device, args.mask)
        dout = torch.randn_like(q)
        ref = _reference(s, q, k, v, mask, dout)
        for name, fn in cands.items():
            if name == "triton-splitk" and not s.cross:
                continue
            rows.extend(bench_one(s, name, fn, (q, k, v, mask, dout), ref, args))
        del q, k, v, mask, dout, ref
        if cuda:
            torch.cuda.empty_cache()
    contrastive = [] if args.no_contrastive else run_contrastive(args.device)
    if args.json is not None:
        payload = {"device": device_name, "dtype": str(dtype), "mask": args.mask,
                   "attention": [_row_dict(r) for r in rows], "contrastive": contrastive}
        args.json.write_text(json.dumps(payload, indent=2, default=str))
        print(f"wrote {args.json}")
    return 0


def _row_dict(row: Row) -> dict[str, Any]:
    d = asdict(row)
    d["pass"] = d.pop("pass_")
    return d


if __name__ == "__main__":
    raise SystemExit(main())

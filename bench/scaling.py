"""How the perceiver trunk and early fusion grow with the number of input tokens N.

Times forward (and, unless ``--forward-only``, backward) of each fusion on one sample of
N tokens (width 128, 2 layers, 1 thread by default), records peak memory, prints the
log-log slope between successive sizes and the achieved GFLOP/s against the analytic
FLOPs, and writes a PNG plot (matplotlib if installed, else ``mmcore.plot``) and a
markdown table for ``docs/performance.md``.

    python bench/scaling.py                           # 1k, 4k, 16k, 64k tokens
    python bench/scaling.py --sizes 1024 4096 --fusions early --padded
    python bench/scaling.py --sizes 1024 --profile    # top ops of each fusion

Each (fusion, N) case runs in a fresh subprocess so its peak resident memory
(``ru_maxrss``) is its own. ``--early-max`` skips early fusion above a size (its time
grows as N^2: at 64k tokens a forward+backward takes many minutes on one core).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

SIZES = (1024, 4096, 16384, 65536)
Row = dict[str, Any]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    p.add_argument("--fusions", nargs="+", default=["perceiver", "early"],
                   choices=["perceiver", "early"])
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=2, help="early fusion / latent heads")
    p.add_argument("--latents", type=int, default=256, help="perceiver latents")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=2, help="timed runs per case (min kept)")
    p.add_argument("--forward-only", action="store_true")
    p.add_argument("--padded", action="store_true",
                   help="mask the last 1/16 of the tokens as padding (else no mask)")
    p.add_argument("--early-max", type=int, default=None,
                   help="skip early fusion above this many tokens")
    p.add_argument("--profile", action="store_true",
                   help="print the top ops (self CPU time) of each case instead of timing")
    p.add_argument("--out", type=Path, default=Path("scaling"),
                   help="folder for scaling.json, scaling.md and scaling.png")
    p.add_argument("--case", help=argparse.SUPPRESS)  # internal: one case, JSON on stdout
    return p.parse_args(argv)


def build_fusion(kind: str, args: argparse.Namespace) -> torch.nn.Module:
    """An ``early`` or ``perceiver`` fusion over one modality ``x`` of width ``args.width``."""
    from mmcore import get_registry
    from mmcore.builder import BuildContext, make_component
    from mmcore.kernels import select_kernels
    from mmcore.spec import ComponentRef

    params: dict[str, Any] = {"layers": args.layers, "heads": args.heads}
    if kind == "perceiver":
        params.update(width=args.width, num_latents=args.latents, cross_heads=1)
    else:
        params.update(width=args.width)
    ctx = BuildContext(kernels=select_kernels(), widths={"x": args.width})
    return make_component(get_registry(), "fusion", ComponentRef(type=kind, **params), ctx)


def make_tokens(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """{"x": Tokens (1, N, width)}; with ``--padded`` the last N/16 tokens are padding."""
    from mmcore.contract import Tokens

    x = torch.randn(1, n, args.width, generator=torch.Generator().manual_seed(0))
    mask = None
    if args.padded:
        mask = torch.ones(1, n, dtype=torch.bool)
        mask[:, n - n // 16:] = False
    return {"x": Tokens(x.requires_grad_(not args.forward_only), mask)}


def flops(kind: str, n: int, args: argparse.Namespace) -> float:
    """Analytic forward FLOPs (2 per multiply-add) of the matmuls; x3 with backward."""
    d, layers = args.width, args.layers
    if kind == "early":
        fwd = layers * (4 * n * n * d + 24 * n * d * d)
    else:  # cross-attention over N inputs (k, v projections + scores) + the latent stack
        m = args.latents
        fwd = 4 * n * d * d + 4 * m * n * d + layers * (4 * m * m * d + 24 * m * d * d)
    return fwd * (1 if args.forward_only else 3)


def step(fusion: torch.nn.Module, tokens: dict[str, Any], backward: bool) -> None:
    out = fusion(tokens)
    if backward:
        out.embeddings["fused"].sum().backward()


def run_case(kind: str, n: int, args: argparse.Namespace) -> Row:
    """Time one case in this process: min over ``--repeat`` CPU-time runs, peak RSS."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    fusion = build_fusion(kind, args)
    tokens = make_tokens(n, args)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(args.repeat):
        start = time.process_time()
        step(fusion, tokens, not args.forward_only)
        times.append(time.process_time() - start)
        fusion.zero_grad(set_to_none=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds = min(times)
    return {"fusion": kind, "tokens": n, "seconds": seconds,
            "peak_extra_mb": (peak - base) / 1024, "gflops": flops(kind, n, args) / 1e9,
            "gflop_per_s": flops(kind, n, args) / seconds / 1e9}


def profile_case(kind: str, n: int, args: argparse.Namespace, rows: int = 12) -> None:
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(args.threads)
    fusion, tokens = build_fusion(kind, args), make_tokens(n, args)
    step(fusion, tokens, not args.forward_only)  # warm up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(fusion, tokens, not args.forward_only)
    print(f"\n== profile: {kind}, N = {n} ==")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def matmul_gflops(threads: int) -> float:
    """This CPU's fp32 matmul rate (1024^3, best of 3): the arithmetic's yardstick."""
    torch.set_num_threads(threads)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    best = math.inf
    for _ in range(3):
        start = time.process_time()
        a @ b
        best = min(best, time.process_time() - start)
    return 2 * 1024**3 / best / 1e9


def subprocess_case(kind: str, n: int, argv: list[str]) -> Row:
    cmd = [sys.executable, __file__, *argv, "--case", f"{kind}:{n}"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def slopes(rows: list[Row], key: str) -> list[float | None]:
    """log(value ratio) / log(N ratio) between each row and the previous one."""
    out: list[float | None] = [None]
    for prev, cur in itertools.pairwise(rows):
        a, b = prev[key], cur[key]
        ok = a > 0 and b > 0
        out.append(math.log(b / a) / math.log(cur["tokens"] / prev["tokens"]) if ok else None)
    return out


def markdown(rows: list[Row], rate: float, args: argparse.Namespace) -> str:
    what = "forward" if args.forward_only else "forward + backward"
    head = (f"{what}, width {args.width}, {args.layers} layers, {args.heads} heads, "
            f"{'padded (last N/16 masked)' if args.padded else 'no padding mask'}, "
            f"{args.threads} thread(s), CPU time; fp32 matmul rate here {rate:.0f} GFLOP/s\n\n"
            "| fusion | N | time | slope | peak extra memory | slope | GFLOP | GFLOP/s |\n"
            "|---|---|---|---|---|---|---|---|\n")
    lines = []
    for kind in args.fusions:
        part = [r for r in rows if r["fusion"] == kind]
        for r, st, sm in zip(part, slopes(part, "seconds"), slopes(part, "peak_extra_mb"),
                             strict=True):
            lines.append(f"| {kind} | {r['tokens']:,} | {r['seconds']:.3f} s | {_f(st)} | "
                         f"{r['peak_extra_mb']:.0f} MB | {_f(sm)} | {r['gflops']:.1f} | "
                         f"{r['gflop_per_s']:.1f} |")
    return head + "\n".join(lines) + "\n"


def _f(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"


def plot(rows: list[Row], path: Path, fusions: list[str]) -> str:
    """Log-log time against N per fusion; matplotlib if present, else mmcore.plot."""
    series = {k: ([math.log10(r["tokens"]) for r in rows if r["fusion"] == k],
                  [math.log10(r["seconds"]) for r in rows if r["fusion"] == k])
              for k in fusions}
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from mmcore.plot import plot_lines

        plot_lines(series, path, title="log10 seconds against log10 tokens",
                   xlabel="log10 N")
        return "mmcore.plot"
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, (xs, ys) in series.items():
        ax.plot([10**x for x in xs], [10**y for y in ys], marker="o", label=kind)
    ax.set(xscale="log", yscale="log", xlabel="input tokens N", ylabel="seconds")
    ax.legend()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return "matplotlib"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.case:
        kind, n = args.case.split(":")
        print(json.dumps(run_case(kind, int(n), args)))
        return 0
    cases = [(k, n) for k in args.fusions for n in sorted(args.sizes)
             if not (k == "early" and args.early_max and n > args.early_max)]
    if args.profile:
        for kind, n in cases:
            profile_case(kind, n, args)
        return 0
    rate = matmul_gflops(args.threads)
    rows = []
    for kind, n in cases:
        rows.append(subprocess_case(kind, n, argv))
        r = rows[-1]
        print(f"{kind:>9} N={n:>6}: {r['seconds']:8.3f} s, {r['peak_extra_mb']:7.0f} MB, "
              f"{r['gflop_per_s']:6.1f} GFLOP/s (matmul {rate:.0f})", flush=True)
    table = markdown(rows, rate, args)
    print("\n" + table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.json").write_text(json.dumps(rows, indent=1))
    (args.out / "scaling.md").write_text(table)
    how = plot(rows, args.out / "scaling.png", args.fusions)
    print(f"wrote {args.out}/scaling.json, scaling.md, scaling.png ({how})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

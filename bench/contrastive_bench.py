"""Time and peak extra memory of the contrastive_loss kernels, forward + backward.

    python bench/contrastive_bench.py --device cpu --sizes 4096 16384 65536 --dim 512

Peak extra memory is what one forward + backward adds on top of the inputs (a, b: (B, D)
float32, L2-normalised), gradients of a and b included:

* cpu: every case runs in a fresh subprocess that allocates the inputs in place, reads its
  resident set (``/proc/self/statm``), runs the loss once and reads the peak resident set
  ``resource.getrusage(RUSAGE_SELF).ru_maxrss``; peak minus resident-before is the case's
  peak extra memory (an upper bound when the run does not set the process's peak).
* cuda: ``torch.cuda.max_memory_allocated()`` after the run minus the memory allocated before.

The naive (reference) loss is skipped where its B x B logits and their gradient alone,
2 * B^2 * 4 bytes, would exceed ``--naive-limit-gb``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from mmcore.kernels import KernelSet

KERNELS = {"cpu": ("reference", "chunked"), "cuda": ("reference", "chunked", "triton")}
LOGIT_SCALE = 1 / 0.07  # CLIP's initial scale


def naive_gb(batch: int) -> float:
    """GB the naive loss needs at least: float32 B x B logits and their gradient."""
    return 2 * batch * batch * 4 / 1e9


def loss_fn(kernel: str) -> Callable[..., Tensor]:
    fn: Callable[..., Tensor] = KernelSet({"contrastive_loss": kernel}).fn("contrastive_loss")
    return fn


def make_inputs(batch: int, dim: int, device: str) -> tuple[Tensor, Tensor, Tensor]:
    """a, b: (B, D) unit rows, normalised in place (no (B, D) temporaries); logit_scale."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(batch, dim, device=device, generator=gen)
    b = torch.randn(batch, dim, device=device, generator=gen)
    for x in (a, b):
        x.div_(x.norm(dim=1, keepdim=True))
    scale = torch.tensor(LOGIT_SCALE, device=device)
    return a.requires_grad_(), b.requires_grad_(), scale.requires_grad_()


def step(fn: Callable[..., Tensor], a: Tensor, b: Tensor, scale: Tensor) -> None:
    """One forward + backward; the gradients are dropped afterwards."""
    fn(a, b, scale).backward()
    a.grad = b.grad = scale.grad = None


def warm_up(fn: Callable[..., Tensor], dim: int, device: str) -> None:
    """A small case first: lazy imports, kernel compilation, allocator set-up."""
    step(fn, *make_inputs(256, dim, device))


def resident_mb() -> float:
    """This process's resident set now (Linux)."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def cpu_case(kernel: str, batch: int, dim: int) -> dict[str, Any]:
    """Runs inside the subprocess: seconds and peak extra MB (ru_maxrss is in KiB on Linux)."""
    fn = loss_fn(kernel)
    warm_up(fn, dim, "cpu")
    a, b, scale = make_inputs(batch, dim, "cpu")
    before = resident_mb()
    start = time.perf_counter()
    fn(a, b, scale).backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_extra_mb": peak - before}


def run_cpu(kernel: str, batch: int, dim: int) -> dict[str, Any]:
    """One case in a fresh process, so that its peak resident set is its own."""
    cmd = [sys.executable, __file__, "--case", kernel, str(batch), str(dim)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_cuda(kernel: str, batch: int, dim: int, repeats: int = 3) -> dict[str, Any]:
    """Median seconds of ``repeats`` runs and the peak allocated on top of the inputs."""
    fn = loss_fn(kernel)
    warm_up(fn, dim, "cuda")
    a, b, scale = make_inputs(batch, dim, "cuda")
    step(fn, a, b, scale)  # compile for this shape's grid
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(a, b, scale).backward()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        peak = torch.cuda.max_memory_allocated() - base
        a.grad = b.grad = scale.grad = None
    return {"seconds": sorted(times)[len(times) // 2], "peak_extra_mb": peak / 2**20}


def run_contrastive_bench(device: str, sizes: list[int], dim: int,
                          naive_limit_gb: float = 8.0) -> list[dict[str, Any]]:
    """One row per (B, kernel): kernel, batch, dim, device, seconds, peak_extra_mb, skipped."""
    rows = []
    for batch in sizes:
        for kernel in KERNELS[device]:
            row: dict[str, Any] = {"kernel": kernel, "batch": batch, "dim": dim,
                                   "device": device, "seconds": None, "peak_extra_mb": None,
                                   "skipped": None}
            if kernel == "reference" and naive_gb(batch) > naive_limit_gb:
                row["skipped"] = f"skipped (would need {naive_gb(batch):.1f} GB)"
            else:
                run = run_cpu if device == "cpu" else run_cuda
                row.update(run(kernel, batch, dim))
            rows.append(row)
            print(f"done: {format_row(row).strip()}", file=sys.stderr, flush=True)
    return rows


def format_row(row: dict[str, Any]) -> str:
    if row["skipped"]:
        return f"{row['batch']:>7} {row['kernel']:>9}   {row['skipped']}"
    return (f"{row['batch']:>7} {row['kernel']:>9} {row['seconds']:>9.2f} s "
            f"{row['peak_extra_mb']:>10.0f} MB")


def format_table(rows: list[dict[str, Any]]) -> str:
    """Rows plus, per kernel other than the naive one, its time and memory ratio to naive."""
    lines = [f"{'B':>7} {'kernel':>9} {'time':>11} {'peak extra':>13}   ratio to naive "
             "(time, memory)"]
    naive = {r["batch"]: r for r in rows if r["kernel"] == "reference"}
    for row in rows:
        line = format_row(row)
        ref = naive.get(row["batch"])
        if row["kernel"] != "reference" and ref is not None and not ref["skipped"]:
            line += (f"   {row['seconds'] / ref['seconds']:.2f}x, "
                     f"{row['peak_extra_mb'] / max(ref['peak_extra_mb'], 1e-9):.3f}x")
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        choices=["cpu", "cuda"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 65536])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--naive-limit-gb", type=float, default=8.0)
    parser.add_argument("--json", action="store_true", help="print rows as JSON, not a table")
    parser.add_argument("--case", nargs=3, metavar=("KERNEL", "B", "D"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:  # inside run_cpu's subprocess
        kernel, batch, dim = args.case
        print(json.dumps(cpu_case(kernel, int(batch), int(dim))))
        return
    rows = run_contrastive_bench(args.device, args.sizes, args.dim, args.naive_limit_gb)
    print(json.dumps(rows, indent=1) if args.json else format_table(rows))


if __name__ == "__main__":
    main()

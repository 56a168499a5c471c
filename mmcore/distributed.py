"""Small torch.distributed helpers that also work in a single process, and the
all-gathers that contrastive losses across data-parallel ranks need.

The gathers accept a different number of rows on each rank (e.g. a last, short batch): the
row counts are exchanged first (one small all_gather), every rank's rows are padded to the
largest count for the all_gather and trimmed again. The result is rank-major: rank 0's rows,
then rank 1's, ...; this rank's rows start at ``sum(sizes[:rank()])``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def gathered_sizes(x: Tensor) -> list[int]:
    """Every rank's ``x.shape[0]``, in rank order (a collective: all ranks must call it).

    Raises ValueError (on every rank alike) when the ranks' rows differ in width."""
    if world_size() == 1:
        return [x.shape[0]]
    shape = torch.tensor([x.shape[0], x[0].numel() if x.shape[0] else -1], device=x.device)
    every = [torch.empty_like(shape) for _ in range(world_size())]
    dist.all_gather(every, shape)
    widths = {int(s[1]) for s in every} - {-1}  # a rank without rows has no width to compare
    if len(widths) > 1:
        raise ValueError(f"cannot gather rows of different widths across ranks: {sorted(widths)}")
    return [int(s[0]) for s in every]


def _all_gather_rows(x: Tensor, sizes: Sequence[int]) -> Tensor:
    """(sizes[rank], ...) on each rank -> (sum(sizes), ...), padded to max(sizes) in transit."""
    longest = max(sizes)
    padded = x.detach().contiguous()
    if x.shape[0] < longest:
        padded = torch.cat([padded, padded.new_zeros(longest - x.shape[0], *x.shape[1:])])
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward all_reduce(SUM)s the gradient of the whole gathered
    tensor and returns this rank's slice.

    Why the sum: every rank's loss depends on every rank's rows (as negatives), so this
    rank's rows receive gradient from the loss computed on each rank. The gradient of the
    sum of the ranks' losses wrt this rank's rows is the sum of those contributions; DDP then
    divides the parameter gradients by the world size, i.e. the update follows the mean of
    the ranks' losses (see the contrastive objective for how each mode scales its loss)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, sizes: tuple[int, ...]) -> Tensor:
        ctx.start, ctx.rows = sum(sizes[:rank()]), x.shape[0]
        return _all_gather_rows(x, sizes)  # (B_global, D)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.clone(memory_format=torch.contiguous_format)  # never reduce autograd's own
        dist.all_reduce(grad)
        return grad[ctx.start:ctx.start + ctx.rows], None


def gather_with_grad(x: Tensor, sizes: Sequence[int] | None = None) -> Tensor:
    """(B_local, D) on each rank -> (B_global, D), rank-major, with gradients flowing back
    to every rank's own rows. ``sizes``: every rank's B_local if already known (else one
    extra small collective finds them). A single process returns ``x``."""
    if world_size() == 1:
        return x
    sizes = gathered_sizes(x) if sizes is None else sizes
    out: Tensor = _GatherWithGrad.apply(x, tuple(sizes))
    return out


def gather_no_grad(x: Tensor, sizes: Sequence[int] | None = None) -> Tensor:
    """Like :func:`gather_with_grad`, but the other ranks' rows are constants: only this
    rank's own slice (put back as ``x`` itself) carries gradient (open_clip's default
    ``gather_with_grad=False``)."""
    if world_size() == 1:
        return x
    sizes = gathered_sizes(x) if sizes is None else sizes
    start = sum(sizes[:rank()])
    everyone = _all_gather_rows(x, sizes)
    return torch.cat([everyone[:start], x, everyone[start + x.shape[0]:]])

"""Small torch.distributed helpers that also work in a single process, and the
all-gather with gradients that contrastive losses across ranks need."""

from __future__ import annotations

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


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward sums every rank's gradient of the gathered tensor and
    returns this rank's slice. Summing (not averaging) is right because each rank's loss
    depends on every rank's rows: the gradient of the total loss wrt a rank's rows is the
    sum of the contributions computed on all ranks."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # (B_local, D) -> (world * B_local, D)
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = rank() * ctx.rows
        return grad[start:start + ctx.rows]


def _check_equal_rows(x: Tensor) -> None:
    rows = torch.tensor([x.shape[0]], device=x.device)
    every = [torch.empty_like(rows) for _ in range(world_size())]
    dist.all_gather(every, rows)
    sizes = sorted({int(r) for r in every})
    if len(sizes) > 1:
        raise ValueError(f"gathering embeddings needs the same local batch on every rank; "
                         f"got {sizes} (use drop_last or a batch size divisible by the ranks)")


def gather_with_grad(x: Tensor) -> Tensor:
    """(B_local, D) on each rank -> (world * B_local, D), rank-major, differentiable.
    A single process returns ``x``."""
    if world_size() == 1:
        return x
    _check_equal_rows(x)
    out: Tensor = _GatherWithGrad.apply(x)
    return out


def gather_no_grad(x: Tensor) -> Tensor:
    """Like :func:`gather_with_grad`, but only this rank's own rows carry gradient
    (open_clip's default ``gather_with_grad=False``)."""
    if world_size() == 1:
        return x
    _check_equal_rows(x)
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank()] = x
    return torch.cat(parts)

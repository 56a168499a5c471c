"""The contrastive objective across 2 gloo ranks against one process with the whole batch.

One spawned job (2 CPU processes, gloo) runs every case: gather mode x loss kind x how the
8 rows split over the ranks (4 + 4, 3 + 5, 0 + 8). Gradients are averaged over the ranks as
DDP does, in float64, and compared with the one-process full-batch gradients to 1e-6 (the
embeddings' producer, a linear layer, and the objective's temperature / bias):

- global: both ranks' losses equal the full loss; gradients equal the full-batch ones.
- local: the mean of the ranks' losses equals the full loss; gradients equal.
- global-no-grad: both losses equal the full loss; the producer's gradients are exactly
  1 / world size of the full-batch ones, the objective's own parameters' are equal.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mmcore import distributed
from mmcore.builder import BuildContext
from mmcore.contract import ModelOutput
from mmcore.kernels import KernelSet
from mmcore_objectives.contrastive import ContrastiveConfig, build_contrastive

B, D_IN, E = 8, 6, 5
SPLITS = [(4, 4), (3, 5), (0, 8)]  # rows of rank 0, rank 1
CASES = [(gather, loss, split) for gather in ("global", "local", "global-no-grad")
         for loss in ("softmax", "sigmoid") for split in SPLITS]


def _setup(seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    producer = torch.nn.Linear(D_IN, 2 * E).double()  # makes both embeddings
    x = torch.randn(B, D_IN, dtype=torch.float64)
    return producer, x, torch.randn(B, D_IN, dtype=torch.float64)


def _objective(gather: str, loss: str) -> Any:
    ctx = BuildContext(kernels=KernelSet({"contrastive_loss": "chunked"}),
                       embedding_widths={"a": E, "b": E})
    objective = build_contrastive(ContrastiveConfig(pairs=[("a", "b")], loss=loss, gather=gather),
                                  ctx)
    return objective.double()


def _loss_and_grads(gather: str, loss: str, rows: slice) -> tuple[float, list[torch.Tensor]]:
    producer, x, y = _setup()
    objective = _objective(gather, loss)
    a = producer(x[rows])[:, :E]
    b = producer(y[rows])[:, E:]
    out = objective(ModelOutput(tokens={}, embeddings={"a": a, "b": b}), {})
    out["loss"].backward()
    params = [*producer.parameters(), *objective.parameters()]
    return float(out["loss"].detach()), [p.grad.clone() for p in params]


def _rows(split: tuple[int, int], rank: int) -> slice:
    return slice(sum(split[:rank]), sum(split[:rank + 1]))


def _width_mismatch(rank: int) -> str:
    try:
        distributed.gather_with_grad(torch.zeros(2, 3 + rank))
    except ValueError as error:
        return str(error)
    return "no error"


def _worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    results: dict[Any, Any] = {"width": _width_mismatch(rank)}
    for gather, loss, split in CASES:
        value, grads = _loss_and_grads(gather, loss, _rows(split, rank))
        for g in grads:  # what DDP does: average the gradients over ranks
            dist.all_reduce(g)
            g /= 2
        losses = [torch.zeros(1, dtype=torch.float64) for _ in range(2)]
        dist.all_gather(losses, torch.tensor([value], dtype=torch.float64))
        results[(gather, loss, split)] = ([float(v) for v in losses], grads)
    widths = [None, None]
    dist.all_gather_object(widths, results["width"])
    results["width"] = widths
    if rank == 0:
        torch.save(results, out)
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> dict[Any, Any]:
    here = str(Path(__file__).resolve().parent)  # spawned children import this module
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
    out = str(tmp_path_factory.mktemp("ranks") / "results.pt")
    mp.start_processes(_worker, args=(_free_port(), out), nprocs=2, start_method="spawn")
    results: dict[Any, Any] = torch.load(out, weights_only=False)  # written by this test
    return results


@pytest.mark.parametrize(("gather", "loss", "split"), CASES)
def test_two_ranks_match_one_process(two_ranks: dict[Any, Any], gather: str, loss: str,
                                     split: tuple[int, int]) -> None:
    full_loss, full_grads = _loss_and_grads(gather, loss, slice(0, B))
    rank_losses, grads = two_ranks[(gather, loss, split)]
    if gather == "local":  # each rank holds its weighted share; their mean is the global loss
        assert sum(rank_losses) / 2 == pytest.approx(full_loss, abs=1e-10)
        assert rank_losses[0] != pytest.approx(full_loss, abs=1e-3)  # a share, not the whole
    else:  # every rank computes the global loss
        assert rank_losses == pytest.approx([full_loss, full_loss], abs=1e-10)
    for i, (got, want) in enumerate(zip(grads, full_grads, strict=True)):
        assert want.abs().max() > 1e-3  # a gradient worth comparing
        # documented: without gathered gradients the embedding producer gets 1 / world size
        # of the full-batch gradient; the objective's own temperature/bias get all of it
        scale = 2.0 if gather == "global-no-grad" and i < 2 else 1.0
        torch.testing.assert_close(got * scale, want, atol=1e-6, rtol=0)


def test_rows_of_different_widths_fail_on_every_rank(two_ranks: dict[Any, Any]) -> None:
    assert two_ranks["width"] == ["cannot gather rows of different widths across ranks: [3, 4]"] * 2


def test_single_process_ignores_gather() -> None:
    values = {g: _loss_and_grads(g, "softmax", slice(0, B))[0]
              for g in ("global", "local", "global-no-grad")}
    assert len(set(values.values())) == 1
    x = torch.randn(3, 2)
    assert distributed.gather_with_grad(x) is x and distributed.gather_no_grad(x) is x
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)

"""Scaling a training run past one process: torchrun's process group and the model wrapped
in DDP or FSDP2 (frozen parts and activation checkpointing: :mod:`mmcore.training.parts`).

The wrapped module is :class:`LossModule`, whose ``forward(batch)`` is the model's
``loss``: DDP and FSDP act only inside a wrapped forward, and objectives (which own
parameters such as a logit scale) run in ``loss``, after the model's own forward.

DDP runs with ``find_unused_parameters=True`` by default: which parameters a step uses
depends on the batch (a modality absent from it leaves its tokenizer and encoder unused),
and without it DDP stops with "expected to have finished reduction". The price is one walk
of the autograd graph per step. Parameters no rank used keep ``grad=None``, so AdamW skips
them as it does in one process. FSDP2 instead needs every parameter in every step (its
reduce-scatter cannot skip a module on one rank): :meth:`Parallel.check_present` stops a
step whose ranks disagree on the modalities present with a clear error instead of a hang.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mmcore.distributed import is_initialized, world_size
from mmcore.errors import MMCoreError
from mmcore.model import device_of

Strategy = Literal["single", "ddp", "fsdp"]


class ParallelError(MMCoreError):
    """The ranks cannot train this step together (e.g. FSDP with an absent modality)."""


#: torchrun sets this in a worker it restarted (``--max-restarts``); 0 on the first start
RESTART_COUNT = "TORCHELASTIC_RESTART_COUNT"


# --- the process group ------------------------------------------------------------------


def under_torchrun() -> bool:
    """Whether torchrun (or another launcher setting RANK/WORLD_SIZE) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch_rank() -> int:
    """This process's rank as the launcher set it (``RANK``; 0 without torchrun), valid
    before the process group is joined and after it is left."""
    return int(os.environ.get("RANK", "0") or 0)


def restart_count() -> int:
    """How often torchrun restarted this worker group (0: first start, or no torchrun)."""
    return int(os.environ.get(RESTART_COUNT, "0") or 0)


def init_distributed(device: str) -> tuple[str, bool]:
    """Join torchrun's process group (NCCL on CUDA, gloo on CPU) unless already joined.

    Returns (this rank's device, whether this call joined): under torchrun a bare ``cuda``
    becomes ``cuda:LOCAL_RANK``. Without torchrun nothing happens.
    """
    if not under_torchrun() or not dist.is_available():
        return device, False
    kind = torch.device(device)
    if kind.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        index = local if kind.index is None else kind.index
        device = f"cuda:{index}"
        torch.cuda.set_device(index)
    if is_initialized():
        return device, False
    _init_group("nccl" if kind.type == "cuda" else "gloo")
    return device, True


def _init_group(backend: str) -> None:
    """``init_process_group`` from torchrun's environment. After a restart, torchrun's
    agent hands the new workers the store the failed ones used, still holding their
    addresses (gloo then dials dead peers); a per-restart key prefix keeps them apart."""
    count = restart_count()
    if count == 0 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        dist.init_process_group(backend)
        return
    world = int(os.environ["WORLD_SIZE"])
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                          world_size=world, is_master=False)
    dist.init_process_group(backend, store=dist.PrefixStore(f"mmcore/restart-{count}", store),
                            rank=int(os.environ["RANK"]), world_size=world)


def shutdown_distributed(joined: bool) -> None:
    """Leave the process group if :func:`init_distributed` joined it, all ranks together
    (gloo can abort a process whose peers tear down while it still talks to them)."""
    if joined and is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def resolve_strategy(requested: str, world: int) -> Strategy:
    """``auto``/``ddp``/``fsdp`` -> what runs: one process needs no wrapper at all."""
    if world <= 1:
        return "single"
    return "fsdp" if requested == "fsdp" else "ddp"


# --- the wrapped model ------------------------------------------------------------------


class LossModule(nn.Module):
    """``forward(batch) -> model.loss(batch)``: the module DDP or FSDP wraps, so the
    objectives' parameters are used inside the wrapped forward too."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        model: Any = self.model
        return model.loss(batch)


class Parallel:
    """The model as a training step runs it: plain, in DDP, or sharded with FSDP2.

    ``model`` stays the plain :class:`~mmcore.model.MultimodalModel` (under FSDP its
    parameters become DTensor shards); ``wrapped`` is what the step calls.
    """

    def __init__(self, model: Any, *, strategy: Strategy, device: str,
                 find_unused_parameters: bool = True) -> None:
        self.model: Any = model
        self.strategy: Strategy = strategy
        self.ignored: list[nn.Parameter] = []
        module = LossModule(model)
        self.wrapped: nn.Module = module
        if strategy == "ddp":
            on_cuda = torch.device(device).type == "cuda"
            self.wrapped = nn.parallel.DistributedDataParallel(
                module, device_ids=[torch.device(device)] if on_cuda else None,
                find_unused_parameters=find_unused_parameters)
        elif strategy == "fsdp":
            self.ignored = _shard(module, device)

    def loss(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        return self.wrapped(batch)

    @contextmanager
    def accumulating(self, sync: bool) -> Iterator[None]:
        """Backward passes inside add gradients locally; ``sync`` (the last micro-batch of a
        step) lets DDP/FSDP reduce them across ranks."""
        if sync or self.strategy == "single":
            yield
            return
        if self.strategy == "ddp":
            with self.wrapped.no_sync():  # type: ignore[operator]
                yield
            return
        self.wrapped.set_requires_gradient_sync(False)  # type: ignore[operator]
        try:
            yield
        finally:
            self.wrapped.set_requires_gradient_sync(True)  # type: ignore[operator]

    def check_present(self, batch: Mapping[str, Any]) -> None:
        """FSDP only: every rank's batch must hold every modality (see the module doc)."""
        if self.strategy != "fsdp":
            return
        names = self.model.modalities
        present = torch.tensor([float(batch.get(m) is not None) for m in names],
                               device=device_of(self.model))
        dist.all_reduce(present)  # (M,) how many ranks have each modality
        partial = [m for m, n in zip(names, present.tolist(), strict=True)
                   if 0 < n < world_size()]
        if partial:
            raise ParallelError(f"FSDP needs each modality in every rank's batch or in none; "
                               f"{partial} is absent on some ranks only. Train with "
                               "strategy: ddp, which handles absent modalities")

    def finish_gradients(self) -> None:
        """FSDP only: average the gradients of the scalar parameters FSDP does not manage."""
        if not self.ignored:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.ignored]
        flat = torch.stack([g.reshape(()) for g in grads])
        dist.all_reduce(flat)
        flat /= world_size()
        for param, value in zip(self.ignored, flat, strict=True):
            param.grad = value.reshape(param.shape).clone()

    def clip(self, params: Sequence[Tensor], max_norm: float) -> float:
        """Clip the gradient norm over all ranks' shards; returns the norm before clipping."""
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        full = getattr(norm, "full_tensor", None)
        return float(full() if callable(full) else norm)

    def state_dict(self) -> dict[str, Tensor]:
        """The whole model's tensors on CPU (under FSDP a collective: call it on every rank;
        only rank 0 receives them)."""
        if self.strategy != "fsdp":
            return dict(self.model.state_dict())
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        full: dict[str, Any] = get_model_state_dict(self.wrapped, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))
        return {_strip(k): v for k, v in full.items()}

    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """``optimizer.state_dict()``, indexed by parameter position, with whole tensors
        (under FSDP a collective gathering to rank 0; other ranks get an empty state)."""
        if self.strategy != "fsdp":
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        full: Any = get_optimizer_state_dict(self.wrapped, optimizer, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))
        index = {name: i for i, name in enumerate(self._names(optimizer))}
        groups = [{**g, "params": [index[n] for n in g["params"]]}
                  for g in full.get("param_groups", [])]
        return {"state": {index[n]: s for n, s in full.get("state", {}).items()},
                "param_groups": groups}

    def load_optimizer_state_dict(self, optimizer: torch.optim.Optimizer,
                                  state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`optimizer_state_dict`; every rank passes the whole state."""
        if self.strategy != "fsdp":
            optimizer.load_state_dict(dict(state))
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        names = self._names(optimizer)
        full: Any = {"state": {names[int(i)]: s for i, s in state["state"].items()},
                "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]}
                                 for g in state["param_groups"]]}
        set_optimizer_state_dict(self.wrapped, optimizer, full,
                                 options=StateDictOptions(full_state_dict=True))

    def _names(self, optimizer: torch.optim.Optimizer) -> list[str]:
        """The wrapped module's names of the optimizer's parameters, in optimizer order."""
        names = {id(p): n for n, p in self.wrapped.named_parameters()}
        return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def _strip(name: str) -> str:
    return name.removeprefix("model.")


def _shard(module: LossModule, device: str) -> list[nn.Parameter]:
    """FSDP2: shard each encoder and the fusion, then the rest at the root. Scalar
    parameters (FSDP2 cannot shard them, e.g. a logit scale) stay whole; returns them."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(torch.device(device).type, (world_size(),))
    scalars = [p for p in module.parameters() if p.dim() == 0]
    model: Any = module.model
    parts = [*model.encoders.values(), model.fusion]
    for part in parts:
        own = {p for p in part.parameters() if p.dim() == 0}
        if any(p.dim() > 0 for p in part.parameters()):
            fully_shard(part, mesh=mesh, ignored_params=own)
    fully_shard(module, mesh=mesh, ignored_params=set(scalars))
    return scalars


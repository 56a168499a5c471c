"""AdamW with weight decay on weights only, and its state as safetensors + JSON."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mmcore.errors import CheckpointError
from mmcore.spec import TrainSpec

_DECAYED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on Linear/Conv weights only; none on biases, norms, embeddings,
    positions, CLS tokens, latents or the logit scale."""
    decay: list[nn.Parameter] = []
    other: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            wanted = isinstance(module, _DECAYED) and name == "weight"
            (decay if wanted else other).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": other, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def make_optimizer(model: nn.Module, cfg: TrainSpec) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, grouped by :func:`param_groups`."""
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                             betas=cfg.betas, eps=1e-8)


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Optimizer state as (tensors for safetensors, JSON). Nothing is pickled."""
    return split_optimizer_state(optimizer.state_dict())


def split_optimizer_state(state: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """An ``optimizer.state_dict()`` -> (tensors named ``state.<index>.<slot>``, JSON)."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, slots in state["state"].items():
        for key, value in slots.items():
            if isinstance(value, Tensor):
                tensors[f"state.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def join_optimizer_state(tensors: Mapping[str, Tensor], meta: Mapping[str, Any]
                         ) -> dict[str, Any]:
    """Inverse of :func:`split_optimizer_state`: an ``optimizer.state_dict()``."""
    slots: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        slots.setdefault(int(index), {})[key] = value
    for index, values in meta["scalars"].items():
        slots.setdefault(int(index), {}).update(values)
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else dict(g)
              for g in meta["param_groups"]]
    return {"state": slots, "param_groups": groups}


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: Mapping[str, Tensor],
                         meta: Mapping[str, Any]) -> None:
    """Inverse of :func:`optimizer_state`."""
    try:
        optimizer.load_state_dict(join_optimizer_state(tensors, meta))
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"optimizer state does not fit this model: {exc}") from None

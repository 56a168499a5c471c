"""The optimizer (AdamW, SGD with momentum, Adafactor) with weight decay on weights only and
optional learning rates per component, and its state as safetensors + JSON.

Lion is left out: torch has none, and no small dependency is taken for it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mmcore.errors import CheckpointError
from mmcore.spec import TrainSpec

_DECAYED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: group options torch keeps as tuples (JSON turns them into lists)
_PAIRS = ("betas", "eps")
OPTIMIZERS: tuple[str, ...] = ("adamw", "sgd", "adafactor")


def param_groups(model: nn.Module, weight_decay: float, *, lr: float | None = None,
                 lr_by_component: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """Weight decay on Linear/Conv weights only; none on biases, norms, embeddings,
    positions, CLS tokens, latents or the logit scale.

    With ``lr_by_component`` (path -> lr, ``lr`` the base), the parameters of each named
    component (the most specific path wins) get groups of their own, with ``component``
    and ``lr_scale`` (its lr / ``lr``) set; the rest keep the two plain groups."""
    owner = _component_of(model, lr_by_component or {})
    groups: dict[tuple[str | None, bool], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            wanted = isinstance(module, _DECAYED) and name == "weight"
            groups.setdefault((owner.get(id(param)), wanted), []).append(param)
    order = [(None, True), (None, False)] + [(path, decay) for path in (lr_by_component or {})
                                              for decay in (True, False)]
    return [_group(groups[key], key, weight_decay, lr, lr_by_component or {})
            for key in order if groups.get(key)]


def _group(params: list[nn.Parameter], key: tuple[str | None, bool], weight_decay: float,
           lr: float | None, lr_by_component: Mapping[str, float]) -> dict[str, Any]:
    path, decay = key
    group: dict[str, Any] = {"params": params, "weight_decay": weight_decay if decay else 0.0}
    if path is not None:
        if lr is None:
            raise ValueError("lr_by_component needs the base lr")
        group.update(component=path, lr_scale=lr_by_component[path] / lr)
    return group


def _component_of(model: nn.Module, lr_by_component: Mapping[str, float]) -> dict[int, str]:
    """Parameter id -> the most specific path of ``lr_by_component`` that holds it."""
    owner: dict[int, str] = {}
    for path in sorted(lr_by_component, key=lambda p: p.count(".")):  # general first
        for module in model.modules_at(path):  # type: ignore[operator]
            for param in module.parameters():
                owner[id(param)] = path
    return owner


def make_optimizer(model: nn.Module, cfg: TrainSpec) -> torch.optim.Optimizer:
    """``cfg.optimizer`` (AdamW, SGD with momentum, Adafactor) over the trainable
    parameters, grouped by :func:`param_groups`."""
    groups = param_groups(model, cfg.weight_decay, lr=cfg.lr,
                          lr_by_component=cfg.lr_by_component)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "adafactor":
        return torch.optim.Adafactor(groups, lr=cfg.lr)
    if cfg.optimizer != "adamw":
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; optimizers are "
                         f"{', '.join(OPTIMIZERS)}")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=1e-8)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set each group's lr: ``lr`` times its ``lr_scale`` (1 when it has none)."""
    for group in optimizer.param_groups:
        scale = group.get("lr_scale")
        group["lr"] = lr if scale is None else lr * scale


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
    groups = [{k: tuple(v) if k in _PAIRS and isinstance(v, list) else v
               for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": slots, "param_groups": groups}


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: Mapping[str, Tensor],
                         meta: Mapping[str, Any]) -> None:
    """Inverse of :func:`optimizer_state`."""
    try:
        optimizer.load_state_dict(join_optimizer_state(tensors, meta))
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"optimizer state does not fit this model: {exc}") from None

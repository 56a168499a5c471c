"""LoRA: low-rank adapters on ``nn.Linear`` layers, declared in ``train.lora``.

An adapted layer computes ``W x + b + (alpha / rank) * B A dropout(x)`` with ``A`` (r, in)
initialised like a Linear weight and ``B`` (out, r) at zero, so an adapted model starts
exactly equal to its base. The layer keeps the base's parameter names (``weight``,
``bias``) and adds ``lora_a`` and ``lora_b``: a base checkpoint's tensors still fit.

A model whose spec declares ``train.lora`` is an adapted model: :func:`mmcore.load`
applies the adapters before loading. Training checkpoints of an adapted run hold the
adapters only, plus a reference to the frozen base (see :mod:`mmcore.training.checkpoints`);
:func:`merge` folds the adapters into the base weights for export.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcore.train_spec import LoraSpec

#: what every adapter tensor's name ends with
ADAPTER_SUFFIXES = (".lora_a", ".lora_b")


class LoraLinear(nn.Linear):
    """A Linear layer (sharing ``base``'s weight and bias) with a low-rank adapter."""

    def __init__(self, base: nn.Linear, *, rank: int, alpha: float, dropout: float) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight  # (out, in), the same Parameter: frozen by apply()
        self.bias = base.bias
        device, dtype = base.weight.device, base.weight.dtype
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=device,
                                               dtype=dtype))  # (r, in)
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=device,
                                               dtype=dtype))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.scaling = alpha / rank
        self.lora_dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """(..., in) -> (..., out)."""
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_a), self.lora_b)
        return F.linear(x, self.weight, self.bias) + update * self.scaling

    def merged(self) -> nn.Linear:
        """A plain Linear whose weight is ``W + scaling * B A``."""
        plain = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                          device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            plain.weight.copy_(self.weight + self.scaling * (self.lora_b @ self.lora_a))
            if self.bias is not None:
                plain.bias.copy_(self.bias)
        plain.weight.requires_grad_(self.weight.requires_grad)
        return plain

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.lora_a.shape[0]}, scaling={self.scaling}"


def _targets(model: Any, cfg: LoraSpec) -> dict[str, nn.Linear]:
    """Full module name -> each Linear the targets select (already adapted ones skipped)."""
    full = {id(m): n for n, m in model.named_modules()}
    found: dict[str, nn.Linear] = {}
    for i, target in enumerate(cfg.targets):
        matched = 0
        for root in model.modules_at(target.path):
            for name, module in root.named_modules():
                if (isinstance(module, nn.Linear) and not isinstance(module, LoraLinear)
                        and fnmatch.fnmatchcase(name, target.modules)):
                    found[full[id(module)]] = module
                    matched += 1
        if not matched:
            raise ValueError(f"train.lora.targets.{i}: no nn.Linear under {target.path!r} "
                             f"matches {target.modules!r}")
    return found


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def apply(model: Any, cfg: LoraSpec) -> list[str]:
    """Adapt the Linears ``cfg`` selects and freeze every other parameter of ``model``.
    Returns the adapted module names. ValueError naming the target that matches nothing."""
    chosen = _targets(model, cfg)
    for param in model.parameters():
        param.requires_grad_(False)
    for name, linear in chosen.items():
        _replace(model, name, LoraLinear(linear, rank=cfg.rank, alpha=cfg.alpha,
                                         dropout=cfg.dropout))
    return sorted(chosen)


def is_adapter(name: str) -> bool:
    """Whether a state-dict key is an adapter tensor."""
    return name.endswith(ADAPTER_SUFFIXES)


def adapter_state(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The adapter tensors of a state dict."""
    return {k: v for k, v in tensors.items() if is_adapter(k)}


def base_state(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Everything but the adapters: the base model's state dict."""
    return {k: v for k, v in tensors.items() if not is_adapter(k)}


def merge(model: Any) -> Any:
    """Fold every adapter into its base weight, in place: the model becomes a plain one
    (its spec without ``train.lora``, every parameter trainable again). Returns ``model``."""
    adapted = [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLinear)]
    for name, module in adapted:
        _replace(model, name, module.merged())
    for param in model.parameters():
        param.requires_grad_(True)
    spec = getattr(model, "spec", None)
    if spec is not None and spec.train.lora is not None:
        model.spec = spec.model_copy(update={"train": spec.train.model_copy(
            update={"lora": None})})
    return model

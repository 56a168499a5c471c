"""Which parts of a model train, and how their activations are kept: ``train.freeze``
(frozen parts) and ``train.activation_checkpointing`` (encoder layers recomputed in
backward)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import wraps
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

_CHECKPOINTED = "_mmcore_checkpointed"


def freeze(model: Any, paths: Sequence[str]) -> list[str]:
    """Stop training the parts at ``paths`` (``ModelSpec.module_paths``); returns the frozen
    parameter names. Frozen parameters stay out of the optimizer, so they never change."""
    frozen: set[int] = set()
    for path in paths:
        for module in model.modules_at(path):
            for param in module.parameters():
                param.requires_grad_(False)
                frozen.add(id(param))
    return [name for name, p in model.named_parameters() if id(p) in frozen]


def _blocks(module: nn.Module) -> list[nn.Module]:
    """The outermost elements of ``nn.ModuleList`` s inside ``module`` (its layers)."""
    found: list[nn.Module] = []
    for child in module.children():
        found += list(child) if isinstance(child, nn.ModuleList) else _blocks(child)
    return found


def _checkpoint_forward(module: nn.Module) -> None:
    forward = module.forward

    @wraps(forward)
    def recomputed(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    module.forward = recomputed
    setattr(module, _CHECKPOINTED, True)


def checkpoint_encoders(model: Any, which: bool | Sequence[str]) -> list[str]:
    """Recompute the activations of the chosen encoders' layers in backward instead of
    keeping them: ``True`` for every encoder, or modality names. Each layer (an element of
    an ``nn.ModuleList`` in the encoder; the whole encoder when it has none) keeps only its
    input. Parameter names do not change, so checkpoints load either way. Returns the
    checkpointed module names."""
    encoders: Mapping[str, nn.Module] = model.encoders
    names = list(encoders) if which is True else list(which or [])
    done: list[str] = []
    for name in names:
        encoder = encoders[name]
        for block in _blocks(encoder) or [encoder]:
            if not getattr(block, _CHECKPOINTED, False):
                _checkpoint_forward(block)
        done.append(f"encoders.{name}")
    return done

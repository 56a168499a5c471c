"""Padding invariance for the conformance suite: a padded token never changes a real one.

The check perturbs every padded position of every masked :class:`Tokens` input with a
random, non-constant vector (no LayerNorm or softmax shift can erase it) and compares what
the module gives for the real tokens. Token outputs are compared at their real positions
(their own mask, else the mask of the input of the same name or shape); every other output
tensor (pooled embeddings, latents, logits) is compared whole.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from mmcore.contract import Tokens

#: Size of the perturbation added to padded positions (inputs are about unit scale).
PERTURBATION_SCALE = 3.0


def input_masks(obj: Any, prefix: str = "input") -> dict[str, Tensor]:
    """The mask of every Tokens inside ``obj`` that has padding, by path. (B, N) bool each."""
    if isinstance(obj, Tokens):
        mask = obj.mask
        return {prefix: mask} if mask is not None and not bool(mask.all()) else {}
    out: dict[str, Tensor] = {}
    for key, value in _children(obj):
        out.update(input_masks(value, f"{prefix}.{key}"))
    return out


def perturb_padding(obj: Any, generator: torch.Generator) -> Any:
    """A copy of ``obj`` whose Tokens carry random non-constant values at padded positions."""
    if isinstance(obj, Tokens):
        if obj.mask is None:
            return obj
        noise = torch.randn(obj.x.shape, generator=generator, dtype=obj.x.dtype)
        noise = noise * PERTURBATION_SCALE + torch.linspace(-1, 1, obj.x.shape[-1])
        x = torch.where(obj.mask[..., None], obj.x, obj.x + noise)
        return dataclasses.replace(obj, x=x)  # a subclass keeps its own fields
    if isinstance(obj, Mapping):
        return {k: perturb_padding(v, generator) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(perturb_padding(v, generator) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: perturb_padding(getattr(obj, f.name), generator)
                                           for f in dataclasses.fields(obj) if f.init})
    return obj


def real_outputs(output: Any, masks: Mapping[str, Tensor],
                 prefix: str = "output") -> dict[str, Tensor]:
    """Every output tensor by path, Tokens reduced to their real tokens ``x[mask]`` (R, D).

    ``masks``: the inputs' masks (from :func:`input_masks`), used for Tokens outputs that
    carry none and per-token tensors (B, N, ...): the one whose path ends like the output's,
    else the only one of the same (B, N)."""
    if isinstance(output, Tensor):  # per-token outputs (B, N, ...) keep their real rows
        mask = _matching_mask(output, prefix, masks) if output.dim() >= 3 else None
        return {prefix: output if mask is None else output[mask]}
    if isinstance(output, Tokens):
        mask = output.mask if output.mask is not None else _matching_mask(output, prefix, masks)
        if mask is None:
            return {f"{prefix}.x": output.x}
        return {f"{prefix}.x[real]": output.x[mask], f"{prefix}.mask": mask}
    out: dict[str, Tensor] = {}
    for key, value in _children(output):
        out.update(real_outputs(value, masks, f"{prefix}.{key}"))
    return out


def _matching_mask(output: Tokens | Tensor, path: str,
                   masks: Mapping[str, Tensor]) -> Tensor | None:
    shape = tuple((output.x if isinstance(output, Tokens) else output).shape[:2])
    name = path.rsplit(".", 1)[-1]
    same_shape = {k: m for k, m in masks.items() if tuple(m.shape) == shape}
    for key, mask in same_shape.items():
        if key.rsplit(".", 1)[-1] == name:
            return mask
    return next(iter(same_shape.values())) if len(same_shape) == 1 else None


def _children(obj: Any) -> list[tuple[str, Any]]:
    if isinstance(obj, Mapping):
        return [(str(k), v) for k, v in obj.items()]
    if isinstance(obj, (list, tuple)):
        return [(str(i), v) for i, v in enumerate(obj)]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)]
    return []

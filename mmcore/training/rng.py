"""Seeding, and the RNG state of every rank captured into (and restored from) JSON."""

from __future__ import annotations

import base64
import random
import warnings
from collections.abc import Mapping
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from mmcore.distributed import rank, world_size


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s RNGs (dropout, augmentation): ``seed`` on rank 0, a
    distinct derived seed on every other rank."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def _b64(t: Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) generator states, as JSON."""
    version, internal, gauss = random.getstate()
    numpy_state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    name, keys, pos, has_gauss, cached = numpy_state
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


def gather_rng() -> list[dict[str, Any]]:
    """Every rank's RNG state, in rank order (on every rank; a collective)."""
    if world_size() == 1:
        return [rng_state()]
    states: list[Any] = [None] * world_size()
    dist.all_gather_object(states, rng_state())
    return states


def restore_rng(state: Mapping[str, Any]) -> None:
    """Restore this rank's RNG state from a checkpoint's ``state.json``; a rank the
    checkpoint did not have keeps its fresh seed (the run resumes under a larger world)."""
    saved = state.get("rng_ranks") or [state["rng"]]
    if rank() < len(saved):
        set_rng_state(saved[rank()])
    elif rank() == len(saved):  # warn once
        warnings.warn(f"the checkpoint holds RNG states of {len(saved)} rank(s); ranks "
                      f">= {len(saved)} start from fresh seeds", stacklevel=3)

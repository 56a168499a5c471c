"""Every built-in kernel candidate, with what it needs and how it is loaded.

The selection machinery lives in :mod:`mmcore.kernels.dispatch`; this module only fills
its table, when the ``mmcore.kernels`` package calls :func:`register_builtin_kernels`.
Candidates whose code needs an optional package (Triton, xformers) are registered with a
lazy loader: their module is imported on the first call, so importing mmcore never imports
triton or xformers (and ``TRITON_INTERPRET``, read when Triton kernels are defined, can
still be set by tests before that).

Ops:
- ``attention``: self-attention (Nq == Nk), see :mod:`mmcore.kernels.attention`.
- ``cross_attention``: queries over another sequence, typically few queries over very many
  keys (Perceiver latents, resamplers, gated cross-attention).
- ``contrastive_loss``: CLIP softmax / SigLIP sigmoid loss over L2-normalised (B, D) pairs,
  ``fn(a, b, logit_scale, *, kind, logit_bias=None, row_offset=0) -> scalar``, see
  :mod:`mmcore.kernels.contrastive`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch

from mmcore.kernels.attention import reference_attention, sdpa_attention
from mmcore.kernels.contrastive import chunked_contrastive_loss, reference_contrastive_loss
from mmcore.kernels.dispatch import Candidate, register_candidate

#: input dtypes the GPU kernels accept; other calls fall back to the op's reference
GPU_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: why an unmeasured GPU candidate is not chosen automatically. Clear it for an op only
#: when a benchmark recorded in docs/performance.md (``bench/gpu_suite.py``) shows the
#: candidate beating the default on that op and its shapes.
UNMEASURED = "no recorded GPU benchmark beats {default} (docs/performance.md)"


def lazy(module: str, name: str) -> Callable[..., Any]:
    """A kernel that imports ``module`` and calls its ``name`` on first use."""

    def load_and_call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    load_and_call.__name__ = load_and_call.__qualname__ = name
    load_and_call.__doc__ = f"{module}.{name}, imported on first call."
    return load_and_call


def _register_attention() -> None:
    for op in ("attention", "cross_attention"):
        register_candidate(Candidate(op, "reference", reference_attention, priority=0,
                                     note="pure PyTorch, float32 math; always present"))
        register_candidate(Candidate(op, "sdpa", sdpa_attention, priority=10,
                                     note="torch.nn.functional.scaled_dot_product_attention"))


def _register_gpu_attention() -> None:
    triton_attention = "mmcore.kernels.triton_attention"
    for op, triton_fn, triton_priority, xformers_priority, triton_note, xformers_note in (
        ("attention", "triton_attention", 5, 8,
         "Triton flash attention (masks fused, no score matrix); below sdpa, whose flash "
         "backend is tuned per GPU, until timed on hardware",
         "xformers memory-efficient attention; between sdpa and triton"),
        ("cross_attention", "triton_cross_attention", 20, 15,
         "Triton split-K flash attention: few queries over many keys fill every SM, and "
         "padding masks stay fused; never timed on a GPU yet",
         "xformers memory-efficient attention; below triton's split-K for few queries"),
    ):
        register_candidate(Candidate(op, "triton", lazy(triton_attention, triton_fn),
                                     devices=("cuda",), min_capability=(8, 0),
                                     packages=("triton",), priority=triton_priority,
                                     note=triton_note, dtypes=GPU_DTYPES, head_dims=(32, 128),
                                     manual_only=UNMEASURED.format(default="sdpa")))
        register_candidate(Candidate(op, "xformers",
                                     lazy("mmcore.kernels.xformers_attention",
                                          "xformers_attention"),
                                     devices=("cuda",), min_capability=(7, 0),
                                     packages=("xformers",), priority=xformers_priority,
                                     note=xformers_note, dtypes=GPU_DTYPES, head_dims=(16, 128),
                                     manual_only=UNMEASURED.format(default="sdpa")))


def _register_contrastive() -> None:
    register_candidate(Candidate(
        "contrastive_loss", "reference", reference_contrastive_loss, priority=0,
        note="pure PyTorch, materialises the B x B logits (and their gradient); always present"))
    register_candidate(Candidate(
        "contrastive_loss", "chunked", chunked_contrastive_loss, priority=10,
        note="pure PyTorch autograd.Function over 2048 x 2048 tiles, online log-sum-exp; "
             "O(B*D + tile^2) memory, any device"))
    register_candidate(Candidate(
        "contrastive_loss", "triton",
        lazy("mmcore.kernels.triton_contrastive", "triton_contrastive_loss"),
        devices=("cuda",), min_capability=(8, 0), packages=("triton",), priority=20,
        note="Triton forward (row/column online log-sum-exp) and backward (recomputed tiles); "
             "fp16/bf16/fp32, never materialises B x B; float64 goes to the chunked loss",
        manual_only=UNMEASURED.format(default="chunked")))


def register_builtin_kernels() -> None:
    """Register every built-in candidate (idempotent: a name registered again is replaced)."""
    _register_attention()
    _register_gpu_attention()
    _register_contrastive()

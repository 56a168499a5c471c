"""CLIP embeddings as model inputs: the ``clip-embed`` preprocessor (raw images or
captions -> a frozen CLIP's unit-norm embeddings ``(B, D)``, computed in the data loader as
DALL-E 2 trains on precomputed CLIP embeddings) and the ``clip-embedding`` tokenizer
(``(B, D)`` -> ``(B, 1, D)`` scaled to unit variance per component, or projected to a few
context tokens ``(B, K, W)`` for a decoder to cross-attend to).

The CLIP is named by ``clip:``: a run folder or checkpoint of a trained CLIP (``mmcore
train clip-tiny``), or a preset name, which builds that preset with random weights under
seed 0 (for tests). It loads on first use and is never part of the model's weights, so a
model with these inputs saves and loads without it; only training (and generation from
prompts) needs it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.contract import ModalityInput, Tokenizer, Tokens
from mmcore.cost import Cost, CostContext, Shape, linear
from mmcore.registry import ComponentConfig


class ClipEmbedConfig(ComponentConfig):
    #: a trained CLIP (run folder or checkpoint), or a preset name (random weights, seed 0)
    clip: str
    #: the CLIP modality whose embedding this is: its preprocessor, tower and projection
    modality: str = "image"


def load_clip(source: str) -> Any:
    """The CLIP model ``source`` names, in eval mode with gradients off: a checkpoint or run
    folder, or a preset built with random weights under seed 0. ValueError for neither."""
    import mmcore

    if Path(source).exists():
        model = mmcore.load(source)
    else:
        try:
            spec = mmcore.load_spec(source)
        except mmcore.MMCoreError:
            raise ValueError(f"clip {source!r} is neither a run folder or checkpoint nor a "
                             "preset name (train one: mmcore train clip-tiny --out RUN)"
                             ) from None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = mmcore.build(spec)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class ClipEmbedder:
    """Raw items (PIL images or strings) -> CLIP embeddings ``(B, D)`` of unit norm."""

    def __init__(self, cfg: ClipEmbedConfig) -> None:
        self.cfg = cfg
        self._clip: Any = None

    @classmethod
    def from_config(cls, cfg: ClipEmbedConfig, ctx: BuildContext | None = None) -> ClipEmbedder:
        return cls(cfg)

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers load their own copy
        return {"cfg": self.cfg, "_clip": None}

    @property
    def clip(self) -> Any:
        if self._clip is None:
            model = load_clip(self.cfg.clip)
            if self.cfg.modality not in model.preprocessors:
                raise ValueError(f"clip {self.cfg.clip!r} has no modality "
                                 f"{self.cfg.modality!r}; it has {sorted(model.preprocessors)}")
            self._clip = model
        return self._clip

    @torch.no_grad()
    def __call__(self, items: Sequence[Any]) -> Tensor:
        clip = self.clip
        inputs = clip.preprocess(self.cfg.modality, list(items))
        return F.normalize(clip.embed(self.cfg.modality, inputs).float(), dim=-1)


class ClipEmbeddingConfig(ComponentConfig):
    #: the embedding width ``D`` (the CLIP's ``embed_dim``)
    dim: int = Field(gt=0)
    #: None: one token ``(B, 1, D)``, the embedding itself (scaled); else a learned
    #: projection to ``tokens`` context tokens of ``width``
    tokens: int | None = Field(None, gt=0)
    width: int | None = Field(None, gt=0)
    #: multiplies the unit-norm embedding; None: sqrt(D), so components have unit variance
    scale: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> ClipEmbeddingConfig:
        if (self.tokens is None) != (self.width is None):
            raise ValueError("give both tokens and width (a projection), or neither")
        return self

    @property
    def factor(self) -> float:
        return self.scale if self.scale is not None else math.sqrt(self.dim)


class ClipEmbeddingTokenizer(Tokenizer):
    """``(B, D)`` embeddings -> ``(B, 1, D) * scale``, or ``(B, K, W)`` context tokens."""

    #: a denoiser conditioned on these is not driven from prompts directly (the
    #: latent-diffusion generator leaves it to the unCLIP one)
    takes_prompts = False

    def __init__(self, cfg: ClipEmbeddingConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.proj: nn.Linear | None = None
        if cfg.tokens is not None and cfg.width is not None:
            self.proj = nn.Linear(cfg.dim, cfg.tokens * cfg.width)
        self.out_width = cfg.width if cfg.width is not None else cfg.dim

    def forward(self, inputs: ModalityInput) -> Tokens:
        if not isinstance(inputs, Tensor) or inputs.dim() != 2 or inputs.shape[1] != self.cfg.dim:
            got = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
            raise ValueError(f"clip-embedding takes embeddings (B, {self.cfg.dim}), got {got}")
        x = inputs * self.cfg.factor
        if self.proj is None:
            return Tokens(x[:, None, :])
        return Tokens(self.proj(x).reshape(len(x), -1, self.out_width))

    def embedding(self, tokens: Tensor) -> Tensor:
        """The inverse of the unprojected form: ``(B, 1, D)`` or ``(B, D)`` tokens -> unit-norm
        embeddings ``(B, D)``."""
        if self.proj is not None:
            raise ValueError("a projected clip-embedding cannot be inverted")
        return F.normalize(tokens.reshape(len(tokens), -1) / self.cfg.factor, dim=-1)


def build_clip_embedding(cfg: ClipEmbeddingConfig, ctx: BuildContext) -> ClipEmbeddingTokenizer:
    return ClipEmbeddingTokenizer(cfg)


def clip_embedding_cost(cfg: ClipEmbeddingConfig, ctx: CostContext) -> Cost:
    if cfg.tokens is None or cfg.width is None:
        return Cost(out=Shape(1, cfg.dim))
    proj = linear(1, cfg.dim, cfg.tokens * cfg.width)
    return Cost(params=proj.params, flops=proj.flops, activations=proj.activations,
                out=Shape(cfg.tokens, cfg.width))


def example_embeddings(module: nn.Module, batch: int, generator: torch.Generator) -> Tensor:
    """Random unit-norm embeddings ``(batch, D)``."""
    assert isinstance(module, ClipEmbeddingTokenizer)
    return F.normalize(torch.randn(batch, module.cfg.dim, generator=generator), dim=-1)

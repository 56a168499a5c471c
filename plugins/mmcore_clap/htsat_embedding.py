"""HTSAT's patch embedding: a log-mel spectrogram folded into a square image, then patches.

Features ``(B, T, n_mels)`` (or ``(B, 1, T, n_mels)``) are batch-normalised per mel band,
stretched along time to ``spec_size * r`` frames (bicubic; ``r = spec_size // n_mels``),
cut into ``r`` consecutive time chunks that are stacked along the frequency axis — a
``spec_size x spec_size`` image — and embedded by a strided convolution (+ LayerNorm) into
a ``grid x grid`` token grid, row-major, ``grid = spec_size // patch_stride``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.contract import ModalityInput, Tokenizer, Tokens
from mmcore.cost import Cost, CostContext, Shape, norm
from mmcore.registry import ComponentConfig


class HTSATEmbeddingConfig(ComponentConfig):
    width: int = Field(gt=0)
    n_mels: int = Field(64, gt=0)
    #: side of the square spectrogram image; a multiple of n_mels
    spec_size: int = Field(256, gt=0)
    patch_size: int = Field(4, gt=0)
    patch_stride: int = Field(4, gt=0)
    patch_norm: bool = True
    bn_eps: float = Field(1e-5, gt=0)

    @model_validator(mode="after")
    def _check(self) -> HTSATEmbeddingConfig:
        if self.spec_size % self.n_mels:
            raise ValueError(f"spec_size {self.spec_size} must be a multiple of n_mels "
                             f"{self.n_mels} (the time chunks are stacked over the mel axis)")
        if self.patch_size < self.patch_stride or (self.patch_size - self.patch_stride) % 2:
            raise ValueError(f"patch_size {self.patch_size} must be patch_stride "
                             f"{self.patch_stride} plus an even overlap")
        if self.spec_size % self.patch_stride:
            raise ValueError(f"spec_size {self.spec_size} must be a multiple of patch_stride "
                             f"{self.patch_stride}")
        return self

    @property
    def freq_ratio(self) -> int:
        return self.spec_size // self.n_mels

    @property
    def frames(self) -> int:
        """Time frames after stretching: ``spec_size * freq_ratio``."""
        return self.spec_size * self.freq_ratio

    @property
    def grid(self) -> int:
        return self.spec_size // self.patch_stride


class HTSATEmbedding(Tokenizer):
    """(B, T <= frames, n_mels) log-mel -> Tokens (B, grid * grid, width), no mask."""

    def __init__(self, cfg: HTSATEmbeddingConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.out_width = cfg.width
        self.batch_norm = nn.BatchNorm2d(cfg.n_mels, eps=cfg.bn_eps)
        pad = (cfg.patch_size - cfg.patch_stride) // 2
        self.proj = nn.Conv2d(1, cfg.width, kernel_size=cfg.patch_size,
                              stride=cfg.patch_stride, padding=pad)
        self.norm = nn.LayerNorm(cfg.width) if cfg.patch_norm else nn.Identity()

    def forward(self, inputs: ModalityInput) -> Tokens:
        features = self._features(inputs)  # (B, 1, T, n_mels)
        x = self.batch_norm(features.transpose(1, 3)).transpose(1, 3)  # per mel band
        image = self.fold(x)  # (B, 1, spec_size, spec_size)
        x = self.proj(image).flatten(2).transpose(1, 2)  # (B, grid * grid, width)
        return Tokens(self.norm(x))

    def fold(self, x: Tensor) -> Tensor:
        """(B, 1, T, n_mels) -> (B, 1, spec_size, spec_size): stretch time, stack chunks."""
        cfg, b = self.cfg, x.shape[0]
        if x.shape[2] < cfg.frames:  # align_corners keeps the mel axis exactly as it is
            x = F.interpolate(x, (cfg.frames, cfg.n_mels), mode="bicubic", align_corners=True)
        x = x.reshape(b, cfg.freq_ratio, cfg.spec_size, cfg.n_mels)  # time chunks
        return x.transpose(2, 3).reshape(b, 1, cfg.spec_size, cfg.spec_size)

    def _features(self, inputs: ModalityInput) -> Tensor:
        features = inputs["features"] if isinstance(inputs, Mapping) else inputs
        if features.dim() == 3:
            features = features.unsqueeze(1)
        cfg = self.cfg
        if features.dim() != 4 or features.shape[1] != 1 or features.shape[3] != cfg.n_mels:
            raise ValueError(f"expected log-mel features (B, frames, {cfg.n_mels}) or (B, 1, "
                             f"frames, {cfg.n_mels}), got {tuple(features.shape)}")
        if features.shape[2] > cfg.frames:
            raise ValueError(f"{features.shape[2]} frames exceed the {cfg.frames} this "
                             f"spectrogram image holds (spec_size {cfg.spec_size} x "
                             f"{cfg.freq_ratio}); crop the audio shorter")
        return features.to(self.proj.weight.dtype)


def build_htsat_embedding(cfg: HTSATEmbeddingConfig, ctx: BuildContext) -> HTSATEmbedding:
    return HTSATEmbedding(cfg)


def htsat_embedding_cost(cfg: HTSATEmbeddingConfig, ctx: CostContext) -> Cost:
    """Batch norm, one strided convolution over the folded image, LayerNorm."""
    tokens, w, k = cfg.grid**2, cfg.width, cfg.patch_size
    conv = Cost(params=k * k * w + w, flops=2 * tokens * k * k * w,
                activations=cfg.spec_size**2)
    cost = Cost(params=2 * cfg.n_mels, activations=cfg.frames * cfg.n_mels) + conv
    if cfg.patch_norm:
        cost = cost + norm(tokens, w)
    return Cost(cost.params, cost.flops, cost.activations, out=Shape(tokens, w))


def example_spectrograms(module: HTSATEmbedding, batch_size: int,
                         generator: torch.Generator) -> Tensor:
    """Random dB-like features, a few frames short (so the time stretch runs)."""
    cfg = module.cfg
    return -40 + 10 * torch.randn(batch_size, cfg.frames - 3, cfg.n_mels, generator=generator)

"""Feature projection: precomputed feature vectors (B, N, F) -> tokens (B, [1 +] N, D).

For inputs that arrive as features another network extracted (ViT frame features, audio
embeddings, BERT token states): a Linear to the model width, an optional LayerNorm and
positions, and an optional learned modality token put first (a per-modality summary token).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.contract import ModalityInput, Tokenizer, Tokens
from mmcore.cost import Cost, CostContext, Shape, embedding, linear, norm
from mmcore.layers import LearnedPositions, sinusoidal_positions
from mmcore.registry import ComponentConfig


class FeatureProjectionConfig(ComponentConfig):
    #: F, the width of each precomputed feature vector
    features: int = Field(gt=0)
    #: D, the model width
    width: int = Field(gt=0)
    #: the most feature vectors per sample (shorter inputs are masked); costs assume it
    length: int = Field(gt=0)
    bias: bool = True
    #: LayerNorm after the projection
    norm: bool = False
    norm_eps: float = Field(1e-5, gt=0)
    #: put one learned token before the features (the modality's summary token)
    modality_token: bool = False
    positions: Literal["none", "learned", "sinusoidal"] = "none"


class FeatureProjection(Tokenizer):
    """Takes features (B, N, F) or ``{"features": (B, N, F), "mask": (B, N)}``, N <= length."""

    def __init__(self, cfg: FeatureProjectionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.out_width = cfg.width
        self.proj = nn.Linear(cfg.features, cfg.width, bias=cfg.bias)
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps) if cfg.norm else None
        scale = cfg.width**-0.5
        self.token = nn.Parameter(torch.randn(cfg.width) * scale) if cfg.modality_token else None
        self.positions: LearnedPositions | None = None
        if cfg.positions == "learned":
            self.positions = LearnedPositions(length=cfg.length, width=cfg.width, std=scale)
        elif cfg.positions == "sinusoidal":
            self.register_buffer("fixed_positions", sinusoidal_positions(cfg.length, cfg.width),
                                 persistent=False)

    def forward(self, inputs: ModalityInput) -> Tokens:
        features, mask = _unpack(inputs)
        self._check(features, mask)
        x = self.proj(features.to(self.proj.weight.dtype))  # (B, N, D)
        if self.norm is not None:
            x = self.norm(x)
        if self.positions is not None:
            x = self.positions(x)
        elif self.cfg.positions == "sinusoidal":
            x = x + self.fixed_positions[: x.shape[1]].to(x.dtype)
        if self.token is not None:
            x = torch.cat([self.token.to(x.dtype).expand(x.shape[0], 1, -1), x], dim=1)
            if mask is not None:  # the token is always real
                mask = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        return Tokens(x, mask)  # (B, [1 +] N, D)

    def _check(self, features: Tensor, mask: Tensor | None) -> None:
        if features.dim() != 3 or features.shape[2] != self.cfg.features:
            raise ValueError(f"expected features (B, N, {self.cfg.features}), got "
                             f"{tuple(features.shape)}")
        if features.shape[1] > self.cfg.length:
            raise ValueError(f"{features.shape[1]} feature vectors exceed length "
                             f"{self.cfg.length}")
        if mask is not None and mask.shape != features.shape[:2]:
            raise ValueError(f"the mask must be (B, N) = {tuple(features.shape[:2])}, got "
                             f"{tuple(mask.shape)}")


def _unpack(inputs: ModalityInput) -> tuple[Tensor, Tensor | None]:
    if isinstance(inputs, Mapping):
        mask = inputs.get("mask")
        return inputs["features"], None if mask is None else mask.bool()
    return inputs, None


def build_feature_projection(cfg: FeatureProjectionConfig,
                             ctx: BuildContext) -> FeatureProjection:
    return FeatureProjection(cfg)


def feature_projection_cost(cfg: FeatureProjectionConfig, ctx: CostContext) -> Cost:
    """The Linear over ``length`` vectors, the norm, the token and learned positions."""
    n, d = cfg.length, cfg.width
    cost = linear(n, cfg.features, d, cfg.bias)
    if cfg.norm:
        cost = cost + norm(n, d)
    if cfg.modality_token:
        cost = cost + embedding(1, d)
    if cfg.positions == "learned":
        cost = cost + embedding(n, d)
    return Cost(cost.params, cost.flops, cost.activations,
                out=Shape(n + int(cfg.modality_token), d))


def example_features(module: FeatureProjection, batch_size: int,
                     generator: torch.Generator) -> dict[str, Tensor]:
    """Random features at full length with random real lengths (element 0 full)."""
    n, f = module.cfg.length, module.cfg.features
    features = torch.randn(batch_size, n, f, generator=generator)
    lengths = torch.randint(1, n + 1, (batch_size,), generator=generator)
    lengths[0] = n
    return {"features": features, "mask": torch.arange(n)[None, :] < lengths[:, None]}

"""Patch embedding: (B, C, H, W) pixels -> (B, 1 + N, D) tokens with positions."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.contract import ModalityInput, Tokenizer, Tokens
from mmcore.cost import Cost, CostContext, Shape, embedding, linear
from mmcore.layers import LearnedPositions, sinusoidal_positions_2d
from mmcore.registry import ComponentConfig


class PatchEmbedConfig(ComponentConfig):
    image_size: int = Field(gt=0)
    patch_size: int = Field(gt=0)
    width: int = Field(gt=0)
    channels: int = Field(3, gt=0)
    cls_token: bool = True
    positions: Literal["learned", "sincos2d", "none"] = "learned"
    bias: bool = False

    @model_validator(mode="after")
    def _divides(self) -> PatchEmbedConfig:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of "
                             f"patch_size {self.patch_size}")
        return self


class PatchEmbedding(Tokenizer):
    """Conv with stride = kernel = patch; CLS token first when enabled."""

    def __init__(self, cfg: PatchEmbedConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.out_width = cfg.width
        self.image_size = cfg.image_size  # the only side accepted
        self.grid = cfg.image_size // cfg.patch_size
        n = self.grid**2 + int(cfg.cls_token)
        self.proj = nn.Conv2d(cfg.channels, cfg.width, cfg.patch_size, cfg.patch_size,
                              bias=cfg.bias)
        scale = cfg.width**-0.5
        self.cls = nn.Parameter(torch.randn(cfg.width) * scale) if cfg.cls_token else None
        self.positions: LearnedPositions | None = None
        if cfg.positions == "learned":
            self.positions = LearnedPositions(length=n, width=cfg.width, std=scale)
        elif cfg.positions == "sincos2d":
            table = sinusoidal_positions_2d(self.grid, self.grid, cfg.width)
            if cfg.cls_token:
                table = torch.cat([torch.zeros(1, cfg.width), table])
            self.register_buffer("fixed_positions", table, persistent=False)

    def forward(self, inputs: ModalityInput) -> Tokens:
        if not isinstance(inputs, Tensor):
            raise TypeError("patch-embedding takes a pixel tensor (B, C, H, W)")
        expected = (self.cfg.channels, self.cfg.image_size, self.cfg.image_size)
        if inputs.dim() != 4 or tuple(inputs.shape[1:]) != expected:
            raise ValueError(f"expected pixels (B, {', '.join(map(str, expected))}), "
                             f"got {tuple(inputs.shape)}")
        x = self.proj(inputs.to(self.proj.weight.dtype)).flatten(2).transpose(1, 2)  # (B, N, D)
        if self.cls is not None:
            x = torch.cat([self.cls.to(x.dtype).expand(x.shape[0], 1, -1), x], dim=1)
        if self.positions is not None:
            x = self.positions(x)
        elif self.cfg.positions == "sincos2d":
            x = x + self.fixed_positions.to(x.dtype)
        return Tokens(x)


def build_patch_embedding(cfg: PatchEmbedConfig, ctx: BuildContext) -> PatchEmbedding:
    return PatchEmbedding(cfg)


def example_pixels(module: PatchEmbedding, batch_size: int, generator: torch.Generator) -> Tensor:
    """Random pixels of the size ``module`` expects, for the conformance suite."""
    c, s = module.cfg.channels, module.cfg.image_size
    return torch.randn(batch_size, c, s, s, generator=generator)


def patch_embedding_cost(cfg: PatchEmbedConfig, ctx: CostContext) -> Cost:
    """The patch projection is a linear map of each flattened (C, P, P) patch to D."""
    patches = (cfg.image_size // cfg.patch_size) ** 2
    tokens = patches + int(cfg.cls_token)
    cost = linear(patches, cfg.channels * cfg.patch_size**2, cfg.width, bias=cfg.bias)
    if cfg.cls_token:
        cost = cost + embedding(1, cfg.width)
    if cfg.positions == "learned":
        cost = cost + embedding(tokens, cfg.width)
    return Cost(cost.params, cost.flops, cost.activations, out=Shape(tokens, cfg.width))

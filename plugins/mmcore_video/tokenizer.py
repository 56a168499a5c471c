"""Tubelet embedding (ViViT): clips (B, C, T, H, W) -> (B, [1 +] T' * H' * W', D) tokens.

Non-overlapping ``tubelet_size x patch_size x patch_size`` tubes are projected by a Conv3d
with stride = kernel. Tokens are ordered time-major (all of frame 0's patches, then frame
1's, ...), the layout the factorised encoder reshapes; ``grid = (T', H', W')``.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.contract import ModalityInput, Tokenizer, Tokens
from mmcore.cost import Cost, CostContext, Shape
from mmcore.registry import ComponentConfig


class TubeletConfig(ComponentConfig):
    num_frames: int = Field(gt=0)
    image_size: int = Field(gt=0)
    width: int = Field(gt=0)
    tubelet_size: int = Field(2, gt=0)
    patch_size: int = Field(16, gt=0)
    channels: int = Field(3, gt=0)
    cls_token: bool = False
    #: learned: one table over every token; separable: a time table + a space table
    positions: Literal["learned", "separable", "none"] = "learned"
    bias: bool = True

    @model_validator(mode="after")
    def _divides(self) -> TubeletConfig:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of "
                             f"patch_size {self.patch_size}")
        if self.num_frames % self.tubelet_size:
            raise ValueError(f"num_frames {self.num_frames} is not a multiple of "
                             f"tubelet_size {self.tubelet_size}")
        return self

    @property
    def grid(self) -> tuple[int, int, int]:
        """(T', H', W'): tubelets along time, height and width."""
        side = self.image_size // self.patch_size
        return self.num_frames // self.tubelet_size, side, side

    @property
    def tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w + int(self.cls_token)


class TubeletEmbedding(Tokenizer):
    """Conv3d tubelets + optional CLS (first) + positions. Sets ``grid``, ``time``, ``space``."""

    def __init__(self, cfg: TubeletConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.out_width = cfg.width
        self.grid = cfg.grid
        self.time, self.space = self.grid[0], self.grid[1] * self.grid[2]
        kernel = (cfg.tubelet_size, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(cfg.channels, cfg.width, kernel, stride=kernel, bias=cfg.bias)
        std = 0.02
        self.cls = nn.Parameter(torch.randn(cfg.width) * std) if cfg.cls_token else None
        self.positions: nn.Parameter | None = None
        self.time_positions: nn.Parameter | None = None
        self.space_positions: nn.Parameter | None = None
        if cfg.positions == "learned":
            self.positions = nn.Parameter(torch.randn(cfg.tokens, cfg.width) * std)
        elif cfg.positions == "separable":
            self.time_positions = nn.Parameter(torch.randn(self.time, 1, cfg.width) * std)
            self.space_positions = nn.Parameter(torch.randn(1, self.space, cfg.width) * std)

    def forward(self, inputs: ModalityInput) -> Tokens:
        if not isinstance(inputs, Tensor):
            raise TypeError("tubelet-embedding takes a clip tensor (B, C, T, H, W)")
        c, s = self.cfg.channels, self.cfg.image_size
        expected = (c, self.cfg.num_frames, s, s)
        if inputs.dim() != 5 or tuple(inputs.shape[1:]) != expected:
            raise ValueError(f"expected clips (B, {', '.join(map(str, expected))}), "
                             f"got {tuple(inputs.shape)}")
        x = self.proj(inputs.to(self.proj.weight.dtype))  # (B, D, T', H', W')
        x = x.flatten(2).transpose(1, 2)  # (B, T' H' W', D), time-major
        if self.time_positions is not None and self.space_positions is not None:
            table = (self.time_positions + self.space_positions).reshape(-1, self.cfg.width)
            x = x + table.to(x.dtype)
        if self.cls is not None:
            x = torch.cat([self.cls.to(x.dtype).expand(x.shape[0], 1, -1), x], dim=1)
        if self.positions is not None:
            x = x + self.positions.to(x.dtype)
        return Tokens(x)


def build_tubelet_embedding(cfg: TubeletConfig, ctx: BuildContext) -> TubeletEmbedding:
    return TubeletEmbedding(cfg)


def tubelet_cost(cfg: TubeletConfig, ctx: CostContext) -> Cost:
    """The Conv3d as a linear over each flattened tubelet, plus CLS and position tables."""
    t, h, w = cfg.grid
    patches, d = t * h * w, cfg.width
    tube = cfg.channels * cfg.tubelet_size * cfg.patch_size**2
    params = tube * d + (d if cfg.bias else 0) + (d if cfg.cls_token else 0)
    if cfg.positions == "learned":
        params += cfg.tokens * d
    elif cfg.positions == "separable":
        params += (t + h * w) * d
    return Cost(params=params, flops=2 * patches * tube * d, activations=patches * tube,
                out=Shape(cfg.tokens, d))


def example_clips(module: TubeletEmbedding, batch_size: int,
                  generator: torch.Generator) -> Tensor:
    """Random clips of the size ``module`` expects, for the conformance suite."""
    cfg = module.cfg
    shape = (batch_size, cfg.channels, cfg.num_frames, cfg.image_size, cfg.image_size)
    return torch.randn(shape, generator=generator)

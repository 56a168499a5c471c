"""Whisper's convolutional stem: log-mel frames (B, n_mels, F) -> (B, ceil(F / 2), D) tokens.

conv1d(k=3, pad=1) -> GELU -> conv1d(k=3, stride=2, pad=1) -> GELU, plus fixed sinusoidal
positions (a saved buffer, not trained). A frame mask (padding after the real frames) is
honoured: padded frames and the first conv's outputs there are zeroed, so a real token
sees exactly what it would see in an unpadded item; the mask is downsampled to tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.contract import ModalityInput, Tokenizer, Tokens
from mmcore.cost import Cost, CostContext, Shape
from mmcore.layers import LearnedPositions, sinusoidal_positions
from mmcore.registry import ComponentConfig


class ConvStemConfig(ComponentConfig):
    width: int = Field(gt=0)
    n_mels: int = Field(80, gt=0)
    #: the most input frames (Whisper: 3000 = 30 s); positions cover ceil(frames / 2) tokens
    frames: int = Field(3000, gt=0)
    positions: Literal["sinusoidal", "learned", "none"] = "sinusoidal"

    @property
    def tokens(self) -> int:
        return (self.frames + 1) // 2


class ConvStem(Tokenizer):
    """Takes features (B, n_mels, F) or ``{"features": ..., "mask": (B, F)}``."""

    def __init__(self, cfg: ConvStemConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.out_width = cfg.width
        self.n_mels, self.context_length = cfg.n_mels, cfg.frames  # what it accepts
        self.conv1 = nn.Conv1d(cfg.n_mels, cfg.width, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(cfg.width, cfg.width, kernel_size=3, stride=2, padding=1)
        self.positions: LearnedPositions | None = None
        if cfg.positions == "learned":
            self.positions = LearnedPositions(length=cfg.tokens, width=cfg.width)
        elif cfg.positions == "sinusoidal":
            # saved with the weights, so a Whisper checkpoint's own table loads bit-exact
            self.register_buffer("fixed_positions", sinusoidal_positions(cfg.tokens, cfg.width))

    def forward(self, inputs: ModalityInput) -> Tokens:
        features, mask = _unpack(inputs)
        self._check(features, mask)
        x = features.to(self.conv1.weight.dtype)
        if mask is not None:
            x = x * mask[:, None, :].to(x.dtype)  # (B, n_mels, F), padding zeroed
        h = F.gelu(self.conv1(x))  # (B, D, F)
        if mask is not None:
            h = h * mask[:, None, :].to(h.dtype)
        h = F.gelu(self.conv2(h)).transpose(1, 2)  # (B, ceil(F / 2), D)
        if self.positions is not None:
            h = self.positions(h)
        elif self.cfg.positions == "sinusoidal":
            h = h + self.get_buffer("fixed_positions")[: h.shape[1]].to(h.dtype)
        return Tokens(h, None if mask is None else mask[:, ::2])

    def _check(self, features: Tensor, mask: Tensor | None) -> None:
        if features.dim() != 3 or features.shape[1] != self.cfg.n_mels:
            raise ValueError(f"expected log-mel features (B, {self.cfg.n_mels}, frames), got "
                             f"{tuple(features.shape)}")
        if features.shape[2] > self.cfg.frames:
            raise ValueError(f"{features.shape[2]} frames exceed the conv stem's "
                             f"frames={self.cfg.frames}")
        if mask is not None and mask.shape != (features.shape[0], features.shape[2]):
            raise ValueError(f"the frame mask must be (B, frames) = "
                             f"{(features.shape[0], features.shape[2])}, got {tuple(mask.shape)}")


def _unpack(inputs: ModalityInput) -> tuple[Tensor, Tensor | None]:
    if isinstance(inputs, Mapping):
        mask = inputs.get("mask")
        return inputs["features"], None if mask is None else mask.bool()
    return inputs, None


def build_conv_stem(cfg: ConvStemConfig, ctx: BuildContext) -> ConvStem:
    return ConvStem(cfg)


def conv_stem_cost(cfg: ConvStemConfig, ctx: CostContext) -> Cost:
    """Two 3-tap convolutions over ``frames`` frames (the second at stride 2)."""
    f, t, d, m = cfg.frames, cfg.tokens, cfg.width, cfg.n_mels
    params = (3 * m * d + d) + (3 * d * d + d) + (t * d if cfg.positions == "learned" else 0)
    flops = 2 * f * 3 * m * d + 2 * t * 3 * d * d
    # saved for backward: conv1 input, GELU1 input, conv2 input, GELU2 input
    activations = f * m + 2 * f * d + t * d
    return Cost(params=params, flops=flops, activations=activations, out=Shape(t, d))


def example_features(module: ConvStem, batch_size: int,
                     generator: torch.Generator) -> dict[str, Tensor]:
    """Random features with random lengths (padding zeroed), for the conformance suite."""
    frames = module.cfg.frames
    features = torch.randn(batch_size, module.cfg.n_mels, frames, generator=generator)
    lengths = torch.randint(1, frames + 1, (batch_size,), generator=generator)
    lengths[0] = frames
    mask = torch.arange(frames)[None, :] < lengths[:, None]
    return {"features": features * mask[:, None, :], "mask": mask}

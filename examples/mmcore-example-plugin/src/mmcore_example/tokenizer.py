"""Feature tokenizer (FT-Transformer, Gorishniy et al. 2021): each numeric feature becomes
one token, ``token_j = x_j * W_j + b_j``, so no positions are needed."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.contract import ModalityInput, Tokenizer, Tokens
from mmcore.registry import ComponentConfig


class FeatureTokensConfig(ComponentConfig):
    num_features: int = Field(gt=0)
    width: int = Field(gt=0)
    #: prepend a learned CLS token (pool with ``cls`` in the fusion)
    cls_token: bool = True


class FeatureTokenizer(Tokenizer):
    """(B, F) numbers -> Tokens (B, [1 +] F, D). Missing values (NaN) are masked out."""

    def __init__(self, cfg: FeatureTokensConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.out_width = cfg.width
        bound = cfg.width**-0.5
        self.weight = nn.Parameter(torch.empty(cfg.num_features, cfg.width).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(cfg.num_features, cfg.width).uniform_(-bound, bound))
        self.cls = nn.Parameter(torch.randn(cfg.width) * bound) if cfg.cls_token else None

    def forward(self, inputs: ModalityInput) -> Tokens:
        if not isinstance(inputs, Tensor) or inputs.dim() != 2 \
                or inputs.shape[1] != self.cfg.num_features:
            shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
            raise ValueError(f"feature-tokens expects (B, {self.cfg.num_features}) numbers, "
                             f"got {shape}")
        values = inputs.to(self.weight.dtype)
        present = torch.isfinite(values)  # (B, F)
        values = torch.where(present, values, torch.zeros_like(values))
        x = values.unsqueeze(-1) * self.weight + self.bias  # (B, F, D)
        x = x * present.unsqueeze(-1).to(x.dtype)
        if self.cls is not None:
            x = torch.cat([self.cls.to(x.dtype).expand(x.shape[0], 1, -1), x], dim=1)
            present = torch.cat([present.new_ones(x.shape[0], 1), present], dim=1)
        return Tokens(x, present)


def build_feature_tokenizer(cfg: FeatureTokensConfig, ctx: BuildContext) -> FeatureTokenizer:
    return FeatureTokenizer(cfg)


def example_features(module: FeatureTokenizer, batch_size: int,
                     generator: torch.Generator) -> Tensor:
    """Random standardised features of the width ``module`` expects, for the conformance suite."""
    return torch.randn(batch_size, module.cfg.num_features, generator=generator)

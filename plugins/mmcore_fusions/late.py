"""Late fusion: each modality is pooled and projected on its own (CLIP's towers)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.contract import Fusion, FusionOutput, Tokens
from mmcore.layers import pool
from mmcore.registry import ComponentConfig


class LateFusionConfig(ComponentConfig):
    #: shared embedding width; None keeps each modality's own width (no projection)
    embed_dim: int | None = Field(None, gt=0)
    #: modality -> cls | eot | mean; unnamed modalities use ``default_pooling``
    pooling: dict[str, Literal["cls", "eot", "mean"]] = Field(default_factory=dict)
    default_pooling: Literal["cls", "eot", "mean"] = "mean"
    projection_bias: bool = False
    #: also emit ``embeddings["fused"]`` combining the modalities present
    combine: Literal["none", "concat", "mean"] = "none"


class LateFusion(Fusion):
    """name: Tokens (B, N, D_m) -> embeddings name: (B, E); no modality sees another."""

    def __init__(self, cfg: LateFusionConfig, widths: dict[str, int]) -> None:
        super().__init__()
        unknown = sorted(set(cfg.pooling) - set(widths))
        if unknown:
            raise ValueError(f"pooling names unknown modalities {unknown}; "
                             f"modalities are {sorted(widths)}")
        if cfg.embed_dim is None and cfg.combine == "mean" and len(set(widths.values())) > 1:
            raise ValueError("combine: mean needs one width; set embed_dim")
        self.cfg = cfg
        self.modalities = sorted(widths)
        self.projections = nn.ModuleDict({
            m: nn.Linear(w, cfg.embed_dim, bias=cfg.projection_bias) if cfg.embed_dim
            else nn.Identity() for m, w in widths.items()
        })
        for proj in self.projections.values():
            if isinstance(proj, nn.Linear):
                nn.init.normal_(proj.weight, std=proj.in_features**-0.5)
        self.embedding_widths = {m: cfg.embed_dim or w for m, w in widths.items()}
        if cfg.combine != "none":
            widths_out = list(self.embedding_widths.values())
            self.embedding_widths["fused"] = (sum(widths_out) if cfg.combine == "concat"
                                              else widths_out[0])

    def forward(self, tokens: dict[str, Tokens]) -> FusionOutput:
        embeddings: dict[str, Tensor] = {}
        for name in sorted(tokens):
            kind = self.cfg.pooling.get(name, self.cfg.default_pooling)
            embeddings[name] = self.projections[name](pool(tokens[name], kind))  # (B, E)
        if self.cfg.combine != "none" and len(embeddings) == len(self.modalities):
            parts = [embeddings[m] for m in self.modalities]
            embeddings["fused"] = (torch.cat(parts, dim=-1) if self.cfg.combine == "concat"
                                   else torch.stack(parts).mean(0))
        return FusionOutput(tokens=dict(tokens), embeddings=embeddings)


def build_late(cfg: LateFusionConfig, ctx: BuildContext) -> LateFusion:
    return LateFusion(cfg, ctx.widths)

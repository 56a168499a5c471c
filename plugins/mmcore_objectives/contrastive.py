"""Contrastive objective: symmetric InfoNCE over any list of modality pairs (CLIP, ImageBind)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.contract import Batch, ModelOutput, Objective
from mmcore.registry import ComponentConfig


class ContrastiveConfig(ComponentConfig):
    #: pairs of embedding names, e.g. [[image, text], [audio, text]]
    pairs: list[tuple[str, str]] = Field(min_length=1)
    init_temperature: float = Field(0.07, gt=0)
    learnable_temperature: bool = True
    #: upper clamp of the logit scale exp(t) (CLIP: 100)
    max_logit_scale: float = Field(100.0, gt=0)

    @field_validator("pairs")
    @classmethod
    def _distinct(cls, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        for a, b in pairs:
            if a == b:
                raise ValueError(f"pair ({a}, {b}) contrasts a modality with itself")
        return pairs


def info_nce(a: Tensor, b: Tensor, logit_scale: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric InfoNCE of L2-normalised (B, E) rows; matching rows are positives.

    Returns (loss, top-1 accuracy of a -> b)."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    logits = logit_scale * a @ b.t()  # (B, B)
    target = torch.arange(a.shape[0], device=a.device)
    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
    accuracy = (logits.argmax(dim=1) == target).float().mean()
    return loss, accuracy


class Contrastive(Objective):
    """Mean symmetric InfoNCE over the configured pairs present in the output."""

    def __init__(self, cfg: ContrastiveConfig) -> None:
        super().__init__()
        self.cfg = cfg
        init = torch.tensor(math.log(1.0 / cfg.init_temperature))
        self.logit_scale = nn.Parameter(init, requires_grad=cfg.learnable_temperature)

    def scale(self) -> Tensor:
        return self.logit_scale.exp().clamp(max=self.cfg.max_logit_scale)

    def forward(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        pairs = [(a, b) for a, b in self.cfg.pairs
                 if a in output.embeddings and b in output.embeddings]
        if not pairs:
            raise ValueError(f"none of the pairs {self.cfg.pairs} is present in this batch "
                             f"(embeddings: {sorted(output.embeddings)})")
        scale = self.scale()
        terms = [info_nce(output.embeddings[a], output.embeddings[b], scale) for a, b in pairs]
        out = {"loss": torch.stack([t[0] for t in terms]).mean(), "logit_scale": scale.detach()}
        for (a, b), (_, acc) in zip(pairs, terms, strict=True):
            out[f"{a}_{b}_accuracy"] = acc
        return out


def build_contrastive(cfg: ContrastiveConfig, ctx: BuildContext) -> Contrastive:
    for a, b in cfg.pairs:
        missing = [m for m in (a, b) if m not in ctx.embedding_widths]
        if missing:
            raise ValueError(f"pair ({a}, {b}): no embedding named {missing}; the fusion gives "
                             f"{sorted(ctx.embedding_widths)}")
        wa, wb = ctx.embedding_widths[a], ctx.embedding_widths[b]
        if wa != wb:
            raise ValueError(f"pair ({a}, {b}) has widths {wa} and {wb}; set the fusion's "
                             "embed_dim so they match")
    return Contrastive(cfg)

"""Captioning / conditional language modelling (BLIP's LM, CoCa's captioner).

The objective owns a :class:`~mmcore_objectives.decoder.CaptionDecoder` (token embedding,
learned positions, causal self-attention + cross-attention blocks, an LM head tied to the
embedding by default) conditioned on the output tokens named ``context`` (a modality's
encoded tokens, or ``fused``). Training is teacher forcing: from the caption ids
``batch[text]`` (``{"ids", "mask"}`` or bare ids), predict ids[1:] from ids[:-1];
cross-entropy ignores padding (mask False, or ``pad_id`` for bare ids). Captions are
decoded with :meth:`Captioning.generate` (KV-cached, greedy or sampled, through the one
generation loop of :mod:`mmcore.generation`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from mmcore.builder import BuildContext
from mmcore.contract import Batch, ModelOutput, Objective, Tokens
from mmcore.cost import Cost, CostContext, Shape, embedding, linear, transformer_stack
from mmcore.kernels import KernelSet
from mmcore.registry import ComponentConfig
from mmcore_objectives.common import (
    accuracy,
    check_width,
    cost_tokens,
    cost_width,
    example_tokens,
    token_width,
    tokens_of,
)
from mmcore_objectives.decoder import CaptionDecoder, Generation


class CaptioningConfig(ComponentConfig):
    #: the output tokens the decoder cross-attends to (a modality or "fused")
    context: str
    #: the batch key of the caption ids
    text: str = "text"
    vocab_size: int = Field(gt=1)
    width: int = Field(gt=0)
    layers: int = Field(2, gt=0)
    heads: int = Field(4, gt=0)
    mlp_ratio: float = Field(4.0, gt=0)
    #: longest caption (learned positions)
    max_length: int = Field(77, ge=2)
    #: width of the context tokens; None: the builder's encoder width of ``context``
    context_width: int | None = Field(None, gt=0)
    tie_embeddings: bool = True
    #: padding id, for batches of bare ids without a mask
    pad_id: int | None = None
    label_smoothing: float = Field(0.0, ge=0, lt=1)


class Captioning(Objective):
    """Next-token cross-entropy of a context-conditioned causal decoder."""

    def __init__(self, cfg: CaptioningConfig, *, context_width: int, kernels: KernelSet) -> None:
        super().__init__()
        self.cfg = cfg
        self.context_width = context_width
        self.decoder = CaptionDecoder(vocab_size=cfg.vocab_size, width=cfg.width,
                                      layers=cfg.layers, heads=cfg.heads,
                                      max_length=cfg.max_length, context_width=context_width,
                                      kernels=kernels, mlp_ratio=cfg.mlp_ratio,
                                      tie_embeddings=cfg.tie_embeddings)

    def _captions(self, batch: Batch, device: torch.device) -> tuple[Tensor, Tensor]:
        """(ids (B, L), mask (B, L)) of the batch's captions."""
        if batch.get(self.cfg.text) is None:
            raise ValueError(f"captioning: the batch has no captions {self.cfg.text!r}")
        raw = batch[self.cfg.text]
        ids = raw["ids"] if isinstance(raw, Mapping) else raw
        mask = raw.get("mask") if isinstance(raw, Mapping) else None
        if mask is None:
            mask = (torch.ones_like(ids, dtype=torch.bool) if self.cfg.pad_id is None
                    else ids != self.cfg.pad_id)
        return ids.to(device), mask.to(device).bool()

    def forward(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        context = tokens_of(output, self.cfg.context, "captioning")
        check_width(context, self.context_width, self.cfg.context, "captioning")
        ids, mask = self._captions(batch, context.x.device)
        logits = self.decoder(ids[:, :-1], context, mask[:, :-1])  # (B, L-1, V)
        keep = mask[:, 1:]  # a target counts when it is a real token
        pred, target = logits[keep], ids[:, 1:][keep]  # (M, V), (M,)
        loss = F.cross_entropy(pred.float(), target, label_smoothing=self.cfg.label_smoothing)
        return {"loss": loss, "token_accuracy": accuracy(pred, target)}

    def generate(self, context: Tokens, *, bos_id: int, eos_id: int, max_new_tokens: int,
                 greedy: bool = True, temperature: float = 1.0, pad_id: int | None = None,
                 use_cache: bool = True, generator: torch.Generator | None = None
                 ) -> Generation:
        """Captions for context tokens (B, Nc, Dc); see :meth:`CaptionDecoder.generate`."""
        return self.decoder.generate(context, bos_id=bos_id, eos_id=eos_id,
                                     max_new_tokens=max_new_tokens, greedy=greedy,
                                     temperature=temperature, pad_id=pad_id,
                                     use_cache=use_cache, generator=generator)


def build_captioning(cfg: CaptioningConfig, ctx: BuildContext) -> Captioning:
    cw = token_width(cfg.context_width, cfg.context, ctx.widths, "context_width")
    if cfg.width % cfg.heads:
        raise ValueError(f"width {cfg.width} is not divisible by heads {cfg.heads}")
    return Captioning(cfg, context_width=cw, kernels=ctx.kernels)


def captioning_cost(cfg: CaptioningConfig, ctx: CostContext) -> Cost:
    """Exact params; FLOPs of teacher forcing over ``max_length`` tokens (an upper bound)
    with context tokens from ``ctx.shapes`` (1 when unknown)."""
    cw = cost_width(cfg.context_width, cfg.context, ctx, "context_width")
    n = cfg.max_length
    stack = transformer_stack(n, cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio,
                              cross=Shape(cost_tokens(cfg.context, ctx), cw))
    head = linear(n, cfg.width, cfg.vocab_size, bias=False)
    if cfg.tie_embeddings:  # the product is paid, the weights are the embedding's
        head = Cost(flops=head.flops, activations=head.activations)
    return (embedding(cfg.vocab_size, cfg.width) + embedding(cfg.max_length, cfg.width)
            + stack + head)


def example_captioning(module: Captioning, batch_size: int,
                       generator: torch.Generator) -> tuple[ModelOutput, dict[str, object]]:
    """Context tokens and padded captions (at least two real tokens each)."""
    cfg = module.cfg
    context = example_tokens(batch_size, 5, module.context_width, generator)
    length = min(cfg.max_length, 6)
    ids = torch.randint(0, cfg.vocab_size, (batch_size, length), generator=generator)
    lengths = torch.randint(2, length + 1, (batch_size,), generator=generator)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    output = ModelOutput(tokens={cfg.context: context}, embeddings={})
    return output, {cfg.text: {"ids": ids, "mask": mask}}

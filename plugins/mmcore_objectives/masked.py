"""Masked modelling (MAE / BEiT / BERT style) on any token stream.

Masking must happen before the encoder, so the objective defines the model's ``prepare``
hook (see :class:`mmcore.contract.Objective`): on the tokenizer output of ``modality`` it
picks ``ratio`` of each row's real tokens (never the first ``keep_prefix``, e.g. a CLS
token), hides them from the encoder (their mask turns False and their values zero, so no
encoder attends to them: MAE's "encoder sees the visible tokens only", without the compute
saving) and remembers the targets:

- ``target: features``: the tokenizer's output embeddings at those positions, detached;
- ``target: ids``: the input token ids (``batch[modality][ids_key]``), BERT's MLM.

``forward`` is MAE's decoder: the encoder output tokens (``source``, by default the same
modality; they must stay one per input position, as late fusion keeps them) are projected,
masked positions are replaced by a learned mask token, fixed sinusoidal positions are added
(the mask token carries no position of its own), a small transformer runs over the real
positions, and a linear layer predicts each token. The loss counts masked positions only:
mean squared error (features) or cross-entropy over ``vocab_size`` (ids).

Masking uses the global torch RNG (the trainer seeds it) and runs whenever
``MultimodalModel.loss`` runs the forward pass, in train and eval mode alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.contract import Batch, ModelOutput, Objective, Tokens
from mmcore.cost import Cost, CostContext, embedding, linear, transformer_stack
from mmcore.kernels import KernelSet
from mmcore.layers import TransformerStack, sinusoidal_positions
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


class MaskedModellingConfig(ComponentConfig):
    #: the modality whose tokenizer output is masked
    modality: str
    #: fraction of each row's maskable real tokens that is masked (at least one, and at
    #: least one stays visible)
    ratio: float = Field(0.5, gt=0, lt=1)
    target: Literal["features", "ids"] = "features"
    #: the output tokens the decoder reads; None: ``modality``
    source: str | None = None
    #: width of the source tokens; None: the builder's encoder width of ``modality``
    width: int | None = Field(None, gt=0)
    #: width of the feature targets (the tokenizer's); None: ``width``
    target_width: int | None = Field(None, gt=0)
    #: ids only: vocabulary size, and the key of the ids in ``batch[modality]``
    vocab_size: int | None = Field(None, gt=0)
    ids_key: str = "ids"
    #: leading tokens never masked (1 for a CLS token)
    keep_prefix: int = Field(0, ge=0)
    #: MAE's per-token target normalisation (features only)
    normalize_target: bool = False
    decoder_width: int | None = Field(None, gt=0)
    decoder_layers: int = Field(1, gt=0)
    decoder_heads: int = Field(4, gt=0)
    mlp_ratio: float = Field(4.0, gt=0)

    @model_validator(mode="after")
    def _target(self) -> MaskedModellingConfig:
        if self.target == "ids" and self.vocab_size is None:
            raise ValueError("target: ids needs vocab_size")
        if self.target == "features" and self.vocab_size is not None:
            raise ValueError("vocab_size is for target: ids")
        return self

    @property
    def source_name(self) -> str:
        return self.source or self.modality


@dataclass
class MaskedInputs:
    """What ``prepare`` leaves for ``forward``: targets (B, N, Dt) features or (B, N) ids,
    ``masked (B, N)`` True where a token was hidden, ``valid (B, N)`` the original mask."""

    targets: Tensor
    masked: Tensor
    valid: Tensor


def choose_masked(valid: Tensor, ratio: float, keep_prefix: int = 0,
                  generator: torch.Generator | None = None) -> Tensor:
    """(B, N) True at ``round(ratio * n)`` random positions among each row's ``n`` maskable
    real tokens, clamped to [1, n - 1] (none when n < 2). -> (B, N) bool."""
    maskable = valid.clone()
    maskable[:, :keep_prefix] = False
    n = maskable.sum(1)  # (B,)
    count = (n.float() * ratio).round().long().clamp(min=1)
    count = torch.minimum(count, n - 1).clamp(min=0)
    noise = torch.rand(valid.shape, device=valid.device, generator=generator)
    noise = noise.masked_fill(~maskable, 2.0)  # never chosen
    rank = noise.argsort(dim=1).argsort(dim=1)  # (B, N) rank of each position
    return (rank < count[:, None]) & maskable


class MaskedModelling(Objective):
    """Hide tokens before the encoder; predict them from the encoder output."""

    def __init__(self, cfg: MaskedModellingConfig, *, width: int, target_width: int,
                 kernels: KernelSet) -> None:
        super().__init__()
        self.cfg = cfg
        self.width, self.target_width = width, target_width
        dw = cfg.decoder_width or width
        self.embed = nn.Linear(width, dw)
        self.mask_token = nn.Parameter(torch.randn(dw) * 0.02)
        self.decoder = TransformerStack(width=dw, layers=cfg.decoder_layers,
                                        heads=cfg.decoder_heads, kernels=kernels,
                                        mlp_ratio=cfg.mlp_ratio)
        self.predict = nn.Linear(dw, cfg.vocab_size or target_width)

    def prepare(self, batch: Batch, tokens: dict[str, Tokens]
                ) -> tuple[dict[str, Tokens], MaskedInputs | None]:
        """Hide the chosen tokens of ``modality`` and keep their targets. Tokenizer outputs
        in and out: name -> (B, N, D)."""
        name = self.cfg.modality
        if name not in tokens:
            return tokens, None
        t = tokens[name]
        valid = t.valid()
        masked = choose_masked(valid, self.cfg.ratio, self.cfg.keep_prefix)
        targets = self._targets(batch, t)
        hidden = Tokens(t.x.masked_fill(masked[..., None], 0.0), valid & ~masked)
        return {**tokens, name: hidden}, MaskedInputs(targets, masked, valid)

    def _targets(self, batch: Batch, tokens: Tokens) -> Tensor:
        if self.cfg.target == "features":
            return tokens.x.detach()
        raw = batch[self.cfg.modality]
        ids = raw[self.cfg.ids_key] if isinstance(raw, Mapping) else raw
        if tuple(ids.shape) != tuple(tokens.x.shape[:2]):
            raise ValueError(f"masked-modelling: ids {tuple(ids.shape)} do not align with the "
                             f"tokens {tuple(tokens.x.shape[:2])} of {self.cfg.modality!r}")
        return ids.to(tokens.x.device)

    def reconstruct(self, source: Tokens, state: MaskedInputs) -> Tensor:
        """MAE decoder: encoder tokens (B, N, D) -> predictions (B, N, Dt or vocab)."""
        h = self.embed(source.x)  # (B, N, Dd)
        h = torch.where(state.masked[..., None], self.mask_token.to(h.dtype), h)
        positions = sinusoidal_positions(h.shape[1], h.shape[2]).to(h.device, h.dtype)
        h = self.decoder(h + positions, state.valid)
        return self.predict(h)

    def forward(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        state = output.prepared
        if not isinstance(state, MaskedInputs):
            raise ValueError(f"masked-modelling found no masked {self.cfg.modality!r} tokens: "
                             "the modality is missing from the batch, or the output did not "
                             "come from MultimodalModel.loss(batch), which runs the masking")
        source = tokens_of(output, self.cfg.source_name, "masked-modelling")
        check_width(source, self.width, self.cfg.source_name, "masked-modelling")
        if source.x.shape[:2] != state.masked.shape:
            raise ValueError(f"masked-modelling: tokens {self.cfg.source_name!r} have shape "
                             f"{tuple(source.x.shape[:2])}, not one per masked input position "
                             f"{tuple(state.masked.shape)}")
        full = self.reconstruct(source, state)  # (B, N, Dt or vocab)
        out = {"masked_fraction": state.masked.sum() / state.valid.sum().clamp(min=1)}
        if not bool(state.masked.any()):  # rows too short to mask: nothing to predict
            return {"loss": full.sum() * 0.0, **out}
        pred, target = full[state.masked], state.targets[state.masked]  # (M, ...)
        if self.cfg.target == "ids":
            return {"loss": F.cross_entropy(pred.float(), target),
                    "accuracy": accuracy(pred, target), **out}
        return {"loss": self._feature_loss(pred, target), **out}

    def _feature_loss(self, pred: Tensor, target: Tensor) -> Tensor:
        if pred.shape[-1] != target.shape[-1]:
            raise ValueError(f"masked-modelling: targets have width {target.shape[-1]}, the "
                             f"objective was built for target_width {pred.shape[-1]}")
        target = target.float()
        if self.cfg.normalize_target:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        return F.mse_loss(pred.float(), target)


def build_masked_modelling(cfg: MaskedModellingConfig, ctx: BuildContext) -> MaskedModelling:
    width = token_width(cfg.width, cfg.modality, ctx.widths, "width")
    dw = cfg.decoder_width or width
    if dw % cfg.decoder_heads or dw % 2:
        raise ValueError(f"decoder width {dw} must be even and divisible by decoder_heads "
                         f"{cfg.decoder_heads}")
    return MaskedModelling(cfg, width=width, target_width=cfg.target_width or width,
                           kernels=ctx.kernels)


def masked_modelling_cost(cfg: MaskedModellingConfig, ctx: CostContext) -> Cost:
    """Exact params; FLOPs of the decoder over every token of ``modality`` (``ctx.shapes``,
    1 when unknown)."""
    width = cost_width(cfg.width, cfg.modality, ctx, "width")
    dw, n = cfg.decoder_width or width, cost_tokens(cfg.modality, ctx)
    out = cfg.vocab_size or cfg.target_width or width
    return (linear(n, width, dw) + embedding(1, dw)
            + transformer_stack(n, dw, cfg.decoder_layers, cfg.decoder_heads, cfg.mlp_ratio)
            + linear(n, dw, out))


def example_masked(module: MaskedModelling, batch_size: int,
                   generator: torch.Generator) -> tuple[ModelOutput, dict[str, Tensor]]:
    """Encoded tokens with hidden positions and their targets, as ``loss`` would give."""
    cfg = module.cfg
    source = example_tokens(batch_size, 6, module.width, generator)
    valid = source.valid()
    masked = choose_masked(valid, cfg.ratio, cfg.keep_prefix, generator)
    if cfg.target == "ids":
        targets = torch.randint(0, cfg.vocab_size or 1, valid.shape, generator=generator)
    else:
        targets = torch.randn(batch_size, 6, module.target_width, generator=generator)
    tokens = {cfg.source_name: Tokens(source.x, valid & ~masked)}
    output = ModelOutput(tokens=tokens, embeddings={},
                         prepared=MaskedInputs(targets, masked, valid))
    return output, {}

"""The LM's components: ``lm-embedding`` (tokenizer), ``decoder-lm`` (fusion, the trunk),
``lm-head`` (head) and ``causal-lm`` (objective). See the package docstring for the design."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from mmcore.builder import BuildContext
from mmcore.contract import (
    Batch,
    Fusion,
    FusionOutput,
    Head,
    ModalityInput,
    ModelOutput,
    Objective,
    Tokenizer,
    Tokens,
)
from mmcore.kernels import KernelSet
from mmcore.layers.decoder import DecoderShape, DecoderStack, LayerHook
from mmcore.layers.kv_cache import KVCache
from mmcore.layers.rotary import ROPE_TYPES, RopeScaling
from mmcore.registry import ComponentConfig

IGNORE_INDEX = -100


@dataclass
class LMTokens(Tokens):
    """Tokens that came from an :class:`LMEmbedding`: also the ``ids: (B, T)`` they embed
    (LLaVA finds its ``<image>`` placeholders by id) and the embedding module itself, which
    a tied :class:`LMHead` multiplies by (the weight keeps one owner and one key)."""

    ids: Tensor | None = None
    embedding: LMEmbedding | None = field(default=None, repr=False, compare=False)


# -- tokenizer: the token embedding --------------------------------------------------------


class LMEmbeddingConfig(ComponentConfig):
    vocab_size: int = Field(gt=0)
    width: int = Field(gt=0)
    #: longest sequence accepted (the model's max_position_embeddings)
    context_length: int = Field(2048, gt=0)
    bos_token_id: int | None = None
    #: one id or several (generation stops at any)
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None


class LMEmbedding(Tokenizer):
    """``{"ids": (B, T), "mask": (B, T)}`` or bare ids -> LMTokens (B, T, D); no positions
    (the trunk's rotary embeddings place tokens)."""

    def __init__(self, cfg: LMEmbeddingConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.out_width = cfg.width
        self.vocab_size, self.context_length = cfg.vocab_size, cfg.context_length
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.width)
        nn.init.normal_(self.embed_tokens.weight, std=0.02)

    @property
    def weight(self) -> Tensor:
        return self.embed_tokens.weight  # (V, D)

    def embed(self, ids: Tensor) -> Tensor:
        """(B, T) -> (B, T, D), with the ids checked."""
        if ids.dim() != 2:
            raise ValueError(f"expected token ids (B, T), got shape {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.cfg.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.cfg.vocab_size}); got "
                             f"[{int(ids.min())}, {int(ids.max())}]")
        return self.embed_tokens(ids)

    def forward(self, inputs: ModalityInput) -> LMTokens:
        ids, mask = (inputs["ids"], inputs.get("mask")) if isinstance(inputs, Mapping) \
            else (inputs, None)
        if ids.shape[-1] > self.cfg.context_length:
            raise ValueError(f"{ids.shape[-1]} tokens exceed context_length "
                             f"{self.cfg.context_length}")
        mask = None if mask is None else mask.bool()
        return LMTokens(self.embed(ids), mask, ids=ids, embedding=self)


def build_lm_embedding(cfg: LMEmbeddingConfig, ctx: BuildContext) -> LMEmbedding:
    return LMEmbedding(cfg)


def example_lm_ids(module: LMEmbedding, batch_size: int,
                   generator: torch.Generator) -> dict[str, Tensor]:
    """Random ids, right-padded to random lengths (at least 1)."""
    length = min(module.cfg.context_length, 7)
    ids = torch.randint(0, module.cfg.vocab_size, (batch_size, length), generator=generator)
    lengths = torch.randint(1, length + 1, (batch_size,), generator=generator)
    return {"ids": ids, "mask": torch.arange(length)[None, :] < lengths[:, None]}


# -- fusion: the decoder trunk -------------------------------------------------------------


class RopeScalingConfig(BaseModel):
    """HF ``rope_scaling`` / ``rope_parameters`` fields mmcore implements."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal[ROPE_TYPES] = "default"  # type: ignore[valid-type]
    factor: float = Field(1.0, gt=0)
    original_max_positions: int | None = Field(None, gt=0)
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True


class DecoderLMConfig(ComponentConfig):
    #: the modality whose tokens are the LM's input embeddings
    text: str = "text"
    layers: int = Field(gt=0)
    heads: int = Field(gt=0)
    #: key/value heads (grouped-query attention); None: heads (multi-head), 1: multi-query
    kv_heads: int | None = Field(None, gt=0)
    #: per-head width; None: width / heads
    head_dim: int | None = Field(None, gt=0)
    #: the SwiGLU MLP's hidden width (HF intermediate_size)
    ffn: int = Field(gt=0)
    norm_eps: float = Field(1e-6, gt=0)
    rope_theta: float = Field(10000.0, gt=0)
    rope_scaling: RopeScalingConfig = RopeScalingConfig()
    max_positions: int = Field(2048, gt=0)
    #: LLaMA attention_bias: biases on q, k, v and o
    attention_bias: bool = False
    #: Qwen2: biases on q, k, v only
    qkv_bias: bool = False
    mlp_bias: bool = False
    #: Mistral's sliding window: longer sequences are refused (not implemented)
    sliding_window: int | None = Field(None, gt=0)


def decoder_shape(cfg: DecoderLMConfig, width: int) -> DecoderShape:
    """The trunk's sizes for input width ``width``; ValueError for inconsistent sizes."""
    head_dim = cfg.head_dim
    if head_dim is None:
        if width % cfg.heads:
            raise ValueError(f"width {width} is not divisible by heads {cfg.heads}; "
                             "set head_dim")
        head_dim = width // cfg.heads
    scaling = RopeScaling(**cfg.rope_scaling.model_dump())
    return DecoderShape(width=width, layers=cfg.layers, heads=cfg.heads,
                        kv_heads=cfg.kv_heads or cfg.heads, head_dim=head_dim, ffn=cfg.ffn,
                        norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta, rope_scaling=scaling,
                        max_positions=cfg.max_positions, qkv_bias=cfg.qkv_bias,
                        out_bias=cfg.attention_bias, mlp_bias=cfg.mlp_bias,
                        sliding_window=cfg.sliding_window)


def last_real(x: Tensor, mask: Tensor | None) -> Tensor:
    """The hidden state of each row's last real token (left or right padding). (B, D)"""
    if mask is None:
        return x[:, -1]
    index = torch.arange(mask.shape[1], device=x.device)
    last = (index * mask.long()).argmax(dim=1)  # (B,)
    return x[torch.arange(x.shape[0], device=x.device), last]


class DecoderLM(Fusion):
    """The causal trunk over modality ``text``'s embeddings -> hidden states.

    ``tokens[text]``: the final-norm hidden states (B, T, D) (LMTokens when the input was);
    ``embeddings[text]``: the last real token's (B, D). Other modalities pass through.
    """

    def __init__(self, cfg: DecoderLMConfig, width: int, kernels: KernelSet) -> None:
        super().__init__()
        self.cfg = cfg
        self.stack = DecoderStack(decoder_shape(cfg, width), kernels)
        self.embedding_widths = {cfg.text: width}

    @property
    def layers(self) -> nn.ModuleList:
        """The decoder layers (Flamingo inserts its blocks between them through ``hook``)."""
        return self.stack.layers

    def new_cache(self) -> KVCache:
        return self.stack.new_cache()

    def hidden(self, embeds: Tensor, mask: Tensor | None = None, cache: KVCache | None = None,
               positions: Tensor | None = None, hook: LayerHook | None = None) -> Tensor:
        """Input embeddings (B, T, D) -> final-norm hidden states (B, T, D)."""
        return self.stack(embeds, mask, cache, positions, hook)

    def forward(self, tokens: dict[str, Tokens]) -> FusionOutput:
        if self.cfg.text not in tokens:
            raise ValueError(f"decoder-lm reads modality {self.cfg.text!r}; the batch has "
                             f"{sorted(tokens)}")
        text = tokens[self.cfg.text]
        x = self.hidden(text.x, text.mask)
        out = LMTokens(x, text.mask, ids=getattr(text, "ids", None),
                       embedding=getattr(text, "embedding", None))
        return FusionOutput(tokens={**tokens, self.cfg.text: out},
                            embeddings={self.cfg.text: last_real(x, text.mask)})


def build_decoder_lm(cfg: DecoderLMConfig, ctx: BuildContext) -> DecoderLM:
    if cfg.text not in ctx.widths:
        raise ValueError(f"text: the model has no modality {cfg.text!r}; it has "
                         f"{sorted(ctx.widths)}")
    return DecoderLM(cfg, ctx.widths[cfg.text], ctx.kernels)


# -- head: the output projection -----------------------------------------------------------


class LMHeadConfig(ComponentConfig):
    #: the fusion output tokens it projects (the decoder-lm's ``text``)
    text: str = "text"
    vocab_size: int = Field(gt=0)
    #: multiply by the token embedding instead of a weight of its own (tie_word_embeddings)
    tied: bool = False
    #: input width; None: the fusion's embedding width of ``text``
    width: int | None = Field(None, gt=0)


class LMHead(Head):
    """Hidden states (B, T, D) -> logits (B, T, V): ``hidden @ weight.T``, the weight its
    own or, when tied, the token embedding's."""

    def __init__(self, cfg: LMHeadConfig, width: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.out_features = cfg.vocab_size
        self.weight: nn.Parameter | None = None
        if not cfg.tied:
            self.weight = nn.Parameter(torch.randn(cfg.vocab_size, width) * width**-0.5)

    def project(self, hidden: Tensor, embedding: LMEmbedding | None = None) -> Tensor:
        """(..., D) -> (..., V)."""
        if self.weight is not None:
            return F.linear(hidden, self.weight)
        if embedding is None:
            raise ValueError("lm-head is tied to the token embedding, but its input tokens "
                             "do not come from an lm-embedding tokenizer")
        return F.linear(hidden, embedding.weight)

    def forward(self, fused: FusionOutput) -> Tensor:
        if self.cfg.text not in fused.tokens:
            raise ValueError(f"lm-head reads tokens {self.cfg.text!r}; the fusion gave "
                             f"{sorted(fused.tokens)}")
        tokens = fused.tokens[self.cfg.text]
        return self.project(tokens.x, getattr(tokens, "embedding", None))  # (B, T, V)


def build_lm_head(cfg: LMHeadConfig, ctx: BuildContext) -> LMHead:
    width = cfg.width or ctx.embedding_widths.get(cfg.text)
    if width is None:
        raise ValueError(f"lm-head: the fusion has no embedding {cfg.text!r} to take the "
                         f"width from (it has {sorted(ctx.embedding_widths)}); set width")
    return LMHead(cfg, width)


def example_fused(module: LMHead, batch_size: int, generator: torch.Generator) -> FusionOutput:
    """Hidden states of the head's width with right padding, for the conformance suite."""
    width = module.weight.shape[1] if module.weight is not None else 8
    x = torch.randn(batch_size, 5, width, generator=generator)
    mask = torch.arange(5)[None, :] < torch.tensor([5, 3, 1][:batch_size] +
                                                   [2] * max(0, batch_size - 3))[:, None]
    return FusionOutput(tokens={module.cfg.text: Tokens(x, mask)})


# -- objective: next-token prediction ------------------------------------------------------


class CausalLMConfig(ComponentConfig):
    #: the head whose logits (B, T, V) are scored
    head: str = "lm"
    #: the batch key of the ids (``{"ids", "mask"}`` or bare ids)
    text: str = "text"
    #: an optional batch key of labels (B, T), -100 where no loss is taken (e.g. prompts)
    labels: str = "labels"


class CausalLM(Objective):
    """Cross-entropy of token t+1 from logits at t; targets that are padding (mask False)
    or labelled -100 are ignored."""

    def __init__(self, cfg: CausalLMConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def labels(self, batch: Batch) -> Tensor:
        """(B, T) the label of each position, IGNORE_INDEX where none: the text ids (or
        ``batch[cfg.labels]``) with padding ignored. Subclasses choose other labels."""
        text = batch[self.cfg.text]
        ids, mask = (text["ids"], text.get("mask")) if isinstance(text, Mapping) \
            else (text, None)
        labels = batch.get(self.cfg.labels)
        labels = ids.clone() if labels is None else labels.clone()
        if mask is not None:
            labels = labels.masked_fill(~mask.bool(), IGNORE_INDEX)
        return labels

    def targets(self, batch: Batch, device: torch.device) -> Tensor:
        """(B, T) next-token targets aligned with the logits, IGNORE_INDEX where none."""
        labels = self.labels(batch)
        shifted = torch.full_like(labels, IGNORE_INDEX)
        shifted[:, :-1] = labels[:, 1:]
        return shifted.to(device)



    def forward(self, output: ModelOutput, batch: Batch) -> dict[str, Tensor]:
        if self.cfg.head not in output.heads:
            raise ValueError(f"causal-lm reads head {self.cfg.head!r}; the model has "
                             f"{sorted(output.heads)}")
        logits = output.heads[self.cfg.head]  # (B, T, V)
        targets = self.targets(batch, logits.device)  # (B, T)
        valid = targets != IGNORE_INDEX
        if not bool(valid.any()):
            zero = logits.sum() * 0.0
            return {"loss": zero, "accuracy": zero.detach(), "tokens": valid.sum()}
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                               ignore_index=IGNORE_INDEX)
        correct = (logits.argmax(-1) == targets) & valid
        accuracy = correct.sum().float() / valid.sum().float()
        return {"loss": loss, "accuracy": accuracy.detach(), "tokens": valid.sum()}


def preprocessed_labels(batch: Batch, text: str, objective: str, maker: str) -> Tensor:
    """``batch[text]['labels']``, which a preprocessor (``maker``) made; a clear error
    naming the objective when they are missing."""
    item = batch[text]
    if not isinstance(item, Mapping) or "labels" not in item:
        raise ValueError(f"{objective} needs batch[{text!r}]['labels'] ({maker} makes them)")
    labels: Tensor = item["labels"]
    return labels


def build_causal_lm(cfg: CausalLMConfig, ctx: BuildContext) -> CausalLM:
    return CausalLM(cfg)


def example_causal_lm(module: CausalLM, batch_size: int,
                      generator: torch.Generator) -> tuple[ModelOutput, dict[str, object]]:
    """Logits over 11 tokens and right-padded ids, for the conformance suite."""
    vocab, length = 11, 6
    logits = torch.randn(batch_size, length, vocab, generator=generator)
    ids = torch.randint(0, vocab, (batch_size, length), generator=generator)
    mask = torch.arange(length)[None, :] < torch.randint(2, length + 1, (batch_size,),
                                                         generator=generator)[:, None]
    output = ModelOutput(tokens={}, embeddings={}, heads={module.cfg.head: logits})
    return output, {module.cfg.text: {"ids": ids, "mask": mask}}


def lm_parts(model: Any, fusion_type: type, family: str) -> tuple[LMEmbedding, Any, LMHead]:
    """(text embedding, fusion, lm-head) of a built model whose trunk is a ``fusion_type``
    over an ``lm-embedding`` text modality (LLaVA, Flamingo, ...); ValueError naming the
    ``family`` otherwise."""
    fusion: Any = model.fusion
    if not isinstance(fusion, fusion_type):
        raise ValueError(f"not a {family} model: its fusion is {type(fusion).__name__}")
    text = model.fusion.cfg.text
    embedding = model.tokenizers[text] if text in model.tokenizers else None  # noqa: SIM401
    heads = [h for h in model.heads.values() if isinstance(h, LMHead)]
    if not isinstance(embedding, LMEmbedding) or len(heads) != 1:
        raise ValueError(f"a {family} model needs an lm-embedding text tokenizer and one "
                         "lm-head")
    return embedding, fusion, heads[0]


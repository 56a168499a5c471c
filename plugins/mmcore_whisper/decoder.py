"""Whisper's text decoder as an mmcore head, laid out exactly as Hugging Face's
``WhisperDecoder`` (so its state dict maps one to one):

``embed_tokens`` (V, D) and learned ``embed_positions`` (P, D); ``layers`` of pre-norm
blocks: ``self_attn`` (causal; ``k_proj`` without bias), ``encoder_attn`` (cross-attention to
the audio tokens), ``fc1`` -> GELU -> ``fc2``, each after its own LayerNorm; a final
``layer_norm``; logits = hidden @ ``embed_tokens.weight``.T (the tied output projection).

As a head, ``forward(fused)`` returns the logits of the token after
``<|startoftranscript|>`` (B, V): what Whisper's language detection reads. Decoding goes
through :mod:`mmcore.generation` (:mod:`mmcore_whisper.runner` adapts this decoder to its
protocol): :meth:`WhisperDecoder.start_cache` and :meth:`WhisperDecoder.step` keep
self-attention keys/values in a preallocated cache and compute the cross-attention
keys/values once per utterance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from mmcore import cost as costs
from mmcore.builder import BuildContext
from mmcore.contract import FusionOutput, Head, Tokens
from mmcore.cost import Cost, CostContext, Shape
from mmcore.kernels import KernelSet
from mmcore.layers import activation
from mmcore.registry import ComponentConfig
from mmcore_whisper.tokens import WhisperTokens


class WhisperDecoderConfig(ComponentConfig):
    """Shapes of Whisper's decoder and the checkpoint's special tokens."""

    #: parameters naming files a checkpoint embeds (mmcore.assets)
    asset_fields: ClassVar[tuple[str, ...]] = ("tokens.tokenizer",)

    #: the output tokens the decoder cross-attends to (the audio modality)
    context: str = "audio"
    vocab_size: int = Field(gt=0)
    width: int = Field(gt=0)
    layers: int = Field(gt=0)
    heads: int = Field(gt=0)
    #: hidden size of the MLP; None: 4 x width
    ffn_dim: int | None = Field(None, gt=0)
    #: learned positions: the longest token sequence (HF ``max_target_positions``)
    max_positions: int = Field(448, gt=0)
    #: width of the context tokens; None: ``width`` (Whisper's encoder and decoder agree)
    context_width: int | None = Field(None, gt=0)
    act: str = "gelu"
    norm_eps: float = Field(1e-5, gt=0)
    tokens: WhisperTokens

    @model_validator(mode="after")
    def _check(self) -> WhisperDecoderConfig:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        bad = sorted(i for i in self.tokens.ids() if i >= self.vocab_size)
        if bad:
            raise ValueError(f"special token ids {bad} are outside the vocabulary of "
                             f"{self.vocab_size}")
        outside = [p for p in self.tokens.alignment_heads or []
                   if not (0 <= p[0] < self.layers and 0 <= p[1] < self.heads)]
        if outside:
            raise ValueError(f"tokens.alignment_heads {outside} are outside the decoder's "
                             f"{self.layers} layers x {self.heads} heads")
        return self

    @property
    def hidden(self) -> int:
        return self.ffn_dim or 4 * self.width


class WhisperAttention(nn.Module):
    """Whisper's attention projections: q, v and out with bias, k without."""

    def __init__(self, *, width: int, heads: int, kv_width: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(kv_width, width, bias=False)
        self.v_proj = nn.Linear(kv_width, width)
        self.out_proj = nn.Linear(width, width)

    def split(self, x: Tensor) -> Tensor:
        """(B, N, D) -> (B, H, N, Dh)."""
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def keys_values(self, source: Tensor) -> tuple[Tensor, Tensor]:
        """(B, N, Dkv) -> keys and values (B, H, N, Dh)."""
        return self.split(self.k_proj(source)), self.split(self.v_proj(source))

    def merge(self, out: Tensor) -> Tensor:
        """(B, H, N, Dh) -> the output projection (B, N, D)."""
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))


class WhisperDecoderLayer(nn.Module):
    """x + self_attn(ln(x)); x + encoder_attn(ln(x), audio); x + fc2(gelu(fc1(ln(x))))."""

    def __init__(self, cfg: WhisperDecoderConfig, context_width: int) -> None:
        super().__init__()
        d = cfg.width
        self.self_attn = WhisperAttention(width=d, heads=cfg.heads, kv_width=d)
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.encoder_attn = WhisperAttention(width=d, heads=cfg.heads, kv_width=context_width)
        self.encoder_attn_layer_norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.fc1 = nn.Linear(d, cfg.hidden)
        self.act = activation(cfg.act)
        self.fc2 = nn.Linear(cfg.hidden, d)
        self.final_layer_norm = nn.LayerNorm(d, eps=cfg.norm_eps)

    def mlp(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(self.final_layer_norm(x))))


@dataclass
class KVCache:
    """Per layer: self-attention keys/values (R, H, L_max, Dh), filled up to ``length``;
    cross-attention keys/values computed once from the audio: (R, H, Nc, Dh) (expanded
    from one item when rows share it), or (B, H, Nc, Dh) with ``group`` = R / B rows per
    item (beams or samples of several utterances; their queries are folded per item).

    ``output``: the output projection (D, V), a contiguous copy of
    ``embed_tokens.weight``.T. A step multiplies one row by it; streaming it in this order
    is about twice as fast on CPUs as the (V, D) layout, and reading these V x D numbers is
    most of a step's time. ``vocab``: the (V, D) embedding itself; several rows (beams,
    batches) read it once for all of them (:meth:`logits`).
    """

    self_k: list[Tensor]
    self_v: list[Tensor]
    cross_k: list[Tensor]
    cross_v: list[Tensor]
    context_mask: Tensor | None
    output: Tensor
    length: int = 0
    group: int = 1
    vocab: Tensor | None = None

    def logits(self, hidden: Tensor) -> Tensor:
        """hidden (..., D) -> logits (..., V). One row streams ``output`` (D, V); two or more
        multiply ``vocab`` (V, D) by their transpose: MKL's GEMM with a few rows is about
        twice as fast in that order (docs/performance.md)."""
        rows = hidden.shape[:-1]
        if self.vocab is None or rows.numel() < 2:
            return hidden @ self.output
        flat = hidden.reshape(-1, hidden.shape[-1])  # (R, D)
        return (self.vocab @ flat.T).T.contiguous().view(*rows, -1)

    def reorder(self, rows: Tensor) -> None:
        """Keep the self-attention rows ``rows`` (R,) in this order (beam search; a row
        stays among its item's rows, so the cross-attention keys need no reordering)."""
        n = self.length
        for t in (*self.self_k, *self.self_v):
            t[:, :, :n] = t[rows, :, :n]  # the index makes a copy first


class WhisperDecoder(Head):
    """ids (B, L) + audio Tokens (B, Nc, Dc) -> next-token logits (B, L, V)."""

    def __init__(self, cfg: WhisperDecoderConfig, *, context_width: int,
                 kernels: KernelSet) -> None:
        super().__init__()
        self.cfg = cfg
        self.out_features = cfg.vocab_size
        self.kernels = kernels
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.width)
        self.embed_positions = nn.Embedding(cfg.max_positions, cfg.width)
        nn.init.normal_(self.embed_tokens.weight, std=0.02)
        nn.init.normal_(self.embed_positions.weight, std=0.01)
        self.layers = nn.ModuleList(WhisperDecoderLayer(cfg, context_width)
                                    for _ in range(cfg.layers))
        self.layer_norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        #: the output projection laid out for decoding steps (not saved): see _output
        self._output_cache: tuple[Any, Tensor] | None = None
        #: stands in for the output projection when set (mmcore_whisper.quantize's int8 one:
        #: ``hidden @ output_override`` -> logits)
        self.output_override: Any = None

    @property
    def tokens(self) -> WhisperTokens:
        return self.cfg.tokens

    def _layers(self) -> list[WhisperDecoderLayer]:
        return list(self.layers)  # type: ignore[arg-type]

    def context_of(self, fused: FusionOutput) -> Tokens:
        """The audio tokens this decoder reads from a fusion's output."""
        if self.cfg.context not in fused.tokens:
            raise ValueError(f"whisper-decoder reads tokens {self.cfg.context!r}; the fusion "
                             f"gave {sorted(fused.tokens)}")
        return fused.tokens[self.cfg.context]

    def forward(self, fused: FusionOutput) -> Tensor:
        """Logits of the first token after <|startoftranscript|>. (B, V)"""
        context = self.context_of(fused)
        ids = torch.full((context.x.shape[0], 1), self.tokens.start, dtype=torch.long,
                         device=context.x.device)
        return self.decode(ids, context)[:, -1]

    def logits(self, hidden: Tensor) -> Tensor:
        """(B, L, D) -> (B, L, V): final norm, then the tied output projection."""
        return self.layer_norm(hidden) @ self.embed_tokens.weight.t()

    def decode(self, ids: Tensor, context: Tokens) -> Tensor:
        """Teacher forcing without a cache: ids (B, L) -> logits (B, L, V)."""
        self._check_length(ids.shape[1])
        x = self.embed_tokens(ids) + self.embed_positions.weight[: ids.shape[1]]  # (B, L, D)
        for layer in self._layers():
            x = x + self._self_attention(layer, x)
            x = x + self._cross(layer, x, *layer.encoder_attn.keys_values(context.x),
                                context.mask)
            x = x + layer.mlp(x)
        return self.logits(x)

    def _self_attention(self, layer: WhisperDecoderLayer, x: Tensor) -> Tensor:
        """Causal self-attention over the whole sequence x (B, L, D)."""
        attn = layer.self_attn
        h = layer.self_attn_layer_norm(x)
        q, (k, v) = attn.split(attn.q_proj(h)), attn.keys_values(h)  # (B, H, L, Dh)
        return attn.merge(self.kernels.attention(q, k, v, causal=True))

    def _cross(self, layer: WhisperDecoderLayer, x: Tensor, k: Tensor, v: Tensor,
               mask: Tensor | None, group: int = 1) -> Tensor:
        """Cross-attention of x (R, n, D) to keys/values (R / group, H, Nc, Dh)."""
        attn = layer.encoder_attn
        q = attn.split(attn.q_proj(layer.encoder_attn_layer_norm(x)))  # (R, H, n, Dh)
        if group == 1:
            return attn.merge(self.kernels.cross_attention(q, k, v, key_padding_mask=mask))
        r, h, n, dh = q.shape  # fold each item's rows into its queries: (B, H, group * n, Dh)
        q = q.view(r // group, group, h, n, dh).transpose(1, 2).reshape(r // group, h, -1, dh)
        out = self.kernels.cross_attention(q, k, v, key_padding_mask=mask)
        out = out.view(r // group, h, group, n, dh).transpose(1, 2).reshape(r, h, n, dh)
        return attn.merge(out)

    def _check_length(self, length: int) -> None:
        if length > self.cfg.max_positions:
            raise ValueError(f"{length} tokens exceed the decoder's {self.cfg.max_positions} "
                             "positions")

    # -- KV-cached decoding ---------------------------------------------------------------

    def start_cache(self, context: Tokens, rows: int | None = None,
                    max_length: int | None = None) -> KVCache:
        """An empty cache for ``rows`` sequences (default: one per context item) reading
        ``context`` (B, Nc, Dc); each item's rows (R / B of them) are consecutive.
        ``max_length``: cache slots (default the decoder's positions; left padding may
        take more slots than positions)."""
        batch = context.x.shape[0]
        rows = rows or batch
        if rows % batch:
            raise ValueError(f"{rows} rows cannot share {batch} context items")
        length = max_length or self.cfg.max_positions
        shape = (rows, self.cfg.heads, length, self.cfg.width // self.cfg.heads)
        dtype, device = context.x.dtype, context.x.device
        self_k = [torch.empty(shape, dtype=dtype, device=device) for _ in self.layers]
        self_v = [torch.empty(shape, dtype=dtype, device=device) for _ in self.layers]
        cross = [layer.encoder_attn.keys_values(context.x) for layer in self._layers()]
        if batch > 1 and rows > batch:  # several items with several rows each
            return KVCache(self_k, self_v, [k for k, _ in cross], [v for _, v in cross],
                           context.mask, self._output(), group=rows // batch,
                           vocab=self._vocab())
        k = [k.contiguous().expand(rows, -1, -1, -1) for k, _ in cross]  # beams: one copy
        v = [v.contiguous().expand(rows, -1, -1, -1) for _, v in cross]
        mask = None if context.mask is None else context.mask.expand(rows, -1)
        return KVCache(self_k, self_v, k, v, mask, self._output(), vocab=self._vocab())

    def _vocab(self) -> Tensor | None:
        """The (V, D) embedding for multi-row logits; None when the output is overridden."""
        return None if self.output_override is not None else self.embed_tokens.weight.detach()

    @torch.no_grad()
    def _output(self) -> Tensor:
        """The (D, V) output projection (see KVCache), kept until the embedding changes
        (new storage, dtype or device, or an in-place update such as load_state_dict)."""
        if self.output_override is not None:
            return self.output_override
        weight = self.embed_tokens.weight
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device)
        if self._output_cache is None or self._output_cache[0] != key:
            self._output_cache = (key, weight.t().contiguous())
        return self._output_cache[1]

    def step(self, ids: Tensor, cache: KVCache, *, positions: Tensor | None = None,
             key_mask: Tensor | None = None) -> Tensor:
        """The next ids (R, n) after ``cache.length`` tokens -> logits (R, n, V); their
        keys and values are written into the cache. See :meth:`step_hidden`."""
        return cache.logits(self.step_hidden(ids, cache, positions=positions,
                                             key_mask=key_mask))

    def step_hidden(self, ids: Tensor, cache: KVCache, *, positions: Tensor | None = None,
                    key_mask: Tensor | None = None) -> Tensor:
        """The next ids (R, n) -> final-normed hidden states (R, n, D). Left-padded rows
        give ``positions (R, n)`` (each token's position among its row's real tokens) and
        ``key_mask (R, cache.length + n)`` bool (False: padding); by default the ids sit at
        positions ``cache.length ...`` and every key is real."""
        start, n = cache.length, ids.shape[1]
        end = start + n
        if cache.self_k and end > cache.self_k[0].shape[2]:
            raise ValueError(f"{end} tokens exceed the cache's {cache.self_k[0].shape[2]}")
        if positions is None:
            self._check_length(end)
            x = self.embed_tokens(ids) + self.embed_positions.weight[start:end]  # (R, n, D)
        else:
            x = self.embed_tokens(ids) + self.embed_positions(positions)
        for i, layer in enumerate(self._layers()):
            x = x + self._cached_self_attention(layer, x, cache, i, (start, end), key_mask)
            x = x + self._cross(layer, x, cache.cross_k[i], cache.cross_v[i],
                                cache.context_mask, cache.group)
            x = x + layer.mlp(x)
        cache.length = end
        return self.layer_norm(x)

    def _cached_self_attention(self, layer: WhisperDecoderLayer, x: Tensor, cache: KVCache,
                               i: int, span: tuple[int, int],
                               key_mask: Tensor | None) -> Tensor:
        attn = layer.self_attn
        start, end = span
        h = layer.self_attn_layer_norm(x)
        q, (k, v) = attn.split(attn.q_proj(h)), attn.keys_values(h)  # (R, H, n, Dh)
        cache.self_k[i][:, :, start:end] = k
        cache.self_v[i][:, :, start:end] = v
        keys, values = cache.self_k[i][:, :, :end], cache.self_v[i][:, :, :end]
        # the n new queries sit at the end of the keys; causal aligns them there
        causal = end - start > 1
        if key_mask is None:
            return attn.merge(self.kernels.attention(q, keys, values, causal=causal))
        out = self.kernels.attention(q, keys, values, causal=causal, key_padding_mask=key_mask)
        return attn.merge(out)


def build_whisper_decoder(cfg: WhisperDecoderConfig, ctx: BuildContext) -> WhisperDecoder:
    context_width = cfg.context_width or ctx.widths.get(cfg.context) or cfg.width
    return WhisperDecoder(cfg, context_width=context_width, kernels=ctx.kernels)


def _attention_cost(nq: int, nk: int, width: int, heads: int, kv_width: int) -> Cost:
    """Whisper attention: q/v/out with bias, k without; scores nq x nk per head."""
    proj = (costs.linear(nq, width, width) + costs.linear(nk, kv_width, width, bias=False)
            + costs.linear(nk, kv_width, width) + costs.linear(nq, width, width))
    return proj + Cost(flops=4 * nq * nk * width, activations=heads * nq * nk + 3 * nq * width,
                       attention_scores=nq * nk)


def whisper_decoder_cost(cfg: WhisperDecoderConfig, ctx: CostContext) -> Cost:
    """Exact parameters; FLOPs of the head's forward: one token (<|startoftranscript|>)
    through every layer, cross-attending to the context tokens (``ctx.shapes``)."""
    context = ctx.shapes.get(cfg.context)
    nc = context.tokens if context is not None else 1
    cw = cfg.context_width or (context.width if context is not None else cfg.width)
    d, n = cfg.width, 1
    layer = (costs.norm(n, d) + _attention_cost(n, n, d, cfg.heads, d)
             + costs.norm(n, d) + _attention_cost(n, nc, d, cfg.heads, cw)
             + costs.norm(n, d) + costs.mlp(n, d, cfg.hidden))
    logits = costs.linear(n, d, cfg.vocab_size, bias=False)
    total = (costs.embedding(cfg.vocab_size, d) + costs.embedding(cfg.max_positions, d)
             + layer.times(cfg.layers) + costs.norm(n, d)
             + Cost(flops=logits.flops, activations=logits.activations))  # tied weights
    return costs.with_out(total, Shape(1, cfg.vocab_size))


def tiny_tokens() -> dict[str, Any]:
    """Special tokens of the tiny config (vocabulary of 16)."""
    return {"eos": 10, "start": 11, "no_timestamps": 12, "languages": {"en": 13},
            "tasks": {"transcribe": 14}}

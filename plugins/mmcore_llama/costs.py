"""Analytic costs of the LM components (parameters exact; FLOPs per sample at full
context, counting matrix products and attention as :mod:`mmcore.cost` does), plus the
per-generated-token FLOPs and KV-cache memory of a trunk."""

from __future__ import annotations

from mmcore.cost import Cost, CostContext, GenerationCost, Shape, embedding, linear, norm
from mmcore.layers.decoder import DecoderShape
from mmcore_llama.components import (
    CausalLMConfig,
    DecoderLMConfig,
    LMEmbeddingConfig,
    LMHeadConfig,
    decoder_shape,
)


def lm_embedding_cost(cfg: LMEmbeddingConfig, ctx: CostContext) -> Cost:
    """The (V, D) table; sequences are taken at the full context length."""
    return Cost(embedding(cfg.vocab_size, cfg.width).params,
                out=Shape(cfg.context_length, cfg.width))


def decoder_layer_cost(s: DecoderShape, tokens: int, keys: int | None = None) -> Cost:
    """One layer over ``tokens`` queries attending to ``keys`` keys (default: ``tokens``)."""
    keys = tokens if keys is None else keys
    q_width, kv_width = s.heads * s.head_dim, s.kv_heads * s.head_dim
    qkv_bias = s.qkv_bias or s.out_bias
    attn = (linear(tokens, s.width, q_width, qkv_bias) + linear(tokens, s.width, kv_width, qkv_bias)
            + linear(tokens, s.width, kv_width, qkv_bias)
            + linear(tokens, q_width, s.width, s.out_bias)
            + Cost(flops=2 * 2 * tokens * keys * q_width,  # q k^T and p v over all heads
                   activations=s.heads * tokens * keys, attention_scores=tokens * keys))
    mlp = (linear(tokens, s.width, s.ffn, s.mlp_bias) + linear(tokens, s.width, s.ffn, s.mlp_bias)
           + linear(tokens, s.ffn, s.width, s.mlp_bias) + Cost(activations=2 * tokens * s.ffn))
    return norm(tokens, s.width, 1) + attn + norm(tokens, s.width, 1) + mlp


def _shape(cfg: DecoderLMConfig, ctx: CostContext) -> tuple[DecoderShape, int]:
    if cfg.text not in ctx.shapes:
        raise ValueError(f"decoder-lm's cost needs the token shape of modality {cfg.text!r}")
    text = ctx.shapes[cfg.text]
    return decoder_shape(cfg, text.width), text.tokens


def trunk_generation(s: DecoderShape) -> GenerationCost:
    """Per generated token: every layer for one query (the part that does not depend on
    the context) plus q k^T and p v per attended key; cached k and v per position."""
    return GenerationCost(flops=decoder_layer_cost(s, 1, 0).flops * s.layers,
                          flops_per_key=2 * 2 * s.heads * s.head_dim * s.layers,
                          kv_elements=2 * s.layers * s.kv_heads * s.head_dim,
                          max_context=s.max_positions)


def decoder_lm_cost(cfg: DecoderLMConfig, ctx: CostContext) -> Cost:
    """``layers`` decoder layers and the final RMSNorm over the text tokens."""
    s, tokens = _shape(cfg, ctx)
    cost = decoder_layer_cost(s, tokens).times(s.layers) + norm(tokens, s.width, 1)
    return Cost(cost.params, cost.flops, cost.activations, cost.attention_scores,
                Shape(tokens, s.width), {cfg.text: s.width}, trunk_generation(s))


def lm_head_cost(cfg: LMHeadConfig, ctx: CostContext) -> Cost:
    """The (V, D) projection of every text token (no parameters when tied)."""
    width = cfg.width or ctx.embedding_widths.get(cfg.text)
    if width is None:
        raise ValueError(f"lm-head's cost needs the fusion's width of {cfg.text!r}")
    tokens = ctx.shapes[cfg.text].tokens if cfg.text in ctx.shapes else 1
    cost = linear(tokens, width, cfg.vocab_size, bias=False)
    params = 0 if cfg.tied else cost.params
    per_token = GenerationCost(flops=linear(1, width, cfg.vocab_size, bias=False).flops)
    return Cost(params, cost.flops, cost.activations, out=Shape(1, cfg.vocab_size),
                generation=per_token)


def causal_lm_cost(cfg: CausalLMConfig, ctx: CostContext) -> Cost:
    """A cross-entropy: no parameters, no matrix products."""
    return Cost()


def flops_per_token(s: DecoderShape, vocab_size: int, context: int) -> int:
    """FLOPs to generate one token with a KV cache holding ``context`` tokens: every layer
    for one query over ``context + 1`` keys, and the output projection."""
    one = decoder_layer_cost(s, 1, context + 1).times(s.layers)
    return one.flops + linear(1, s.width, vocab_size, bias=False).flops


def kv_cache_bytes(s: DecoderShape, context: int, *, batch_size: int = 1,
                   bytes_per_element: int = 2) -> int:
    """Memory of the keys and values of ``context`` tokens (default 2 bytes: bf16/fp16)."""
    return 2 * s.layers * s.kv_heads * s.head_dim * context * batch_size * bytes_per_element

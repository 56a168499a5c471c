"""A LLaMA-family decoder trunk: pre-norm blocks of grouped-query causal self-attention
with rotary positions and a SwiGLU MLP, RMSNorm, and a KV cache.

Parameter names follow Hugging Face's ``LlamaModel`` (``layers.{i}.self_attn.q_proj``,
``input_layernorm``, ``mlp.gate_proj``, ``norm``, ...), so checkpoints map key for key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from mmcore.kernels import KernelSet
from mmcore.layers.kv_cache import KVCache
from mmcore.layers.mlp import SwiGLU
from mmcore.layers.rmsnorm import RMSNorm
from mmcore.layers.rotary import RopeScaling, RotaryEmbedding, apply_rotary

#: ``hook(layer_index, hidden (B, T, D)) -> hidden``, run before each layer (Flamingo's
#: gated cross-attention enters here)
LayerHook = Callable[[int, Tensor], Tensor]


@dataclass(frozen=True)
class DecoderShape:
    """The sizes and options of a decoder trunk."""

    width: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)
    max_positions: int = 2048
    qkv_bias: bool = False  # Qwen2: biases on q, k, v
    out_bias: bool = False  # LLaMA attention_bias: biases on q, k, v and o
    mlp_bias: bool = False
    #: Mistral's sliding window; longer key sequences are refused, not approximated
    sliding_window: int | None = None

    def __post_init__(self) -> None:
        if self.heads % self.kv_heads:
            raise ValueError(f"heads {self.heads} is not a multiple of kv_heads {self.kv_heads}")


class GroupedQueryAttention(nn.Module):
    """Causal self-attention whose ``kv_heads`` key/value heads are shared by groups of
    query heads (kv_heads = heads: multi-head; 1: multi-query). (B, T, D) -> (B, T, D)."""

    def __init__(self, shape: DecoderShape, kernels: KernelSet) -> None:
        super().__init__()
        s = shape
        self.heads, self.kv_heads, self.head_dim = s.heads, s.kv_heads, s.head_dim
        self.kernels = kernels
        qkv_bias = s.qkv_bias or s.out_bias
        self.q_proj = nn.Linear(s.width, s.heads * s.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(s.width, s.kv_heads * s.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(s.width, s.kv_heads * s.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(s.heads * s.head_dim, s.width, bias=s.out_bias)

    def _split(self, x: Tensor, heads: int) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, heads, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)

    def _repeat(self, x: Tensor) -> Tensor:
        """(B, Hkv, S, Dh) -> (B, H, S, Dh), each kv head serving ``H / Hkv`` query heads."""
        groups = self.heads // self.kv_heads
        if groups == 1:
            return x
        b, h, s, d = x.shape
        return x[:, :, None].expand(b, h, groups, s, d).reshape(b, h * groups, s, d)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], key_mask: Tensor | None,
                cache: KVCache | None = None, layer: int = 0) -> Tensor:
        """``key_mask: (B, S)`` marks real keys (None: all real). The new queries are the
        last ``T`` positions; one query (a decoding step) sees every key, so it needs no
        causal mask, which keeps SDPA on its unmasked fast path."""
        cos, sin = rope
        q = apply_rotary(self._split(self.q_proj(x), self.heads), cos, sin)  # (B, H, T, Dh)
        k = apply_rotary(self._split(self.k_proj(x), self.kv_heads), cos, sin)
        v = self._split(self.v_proj(x), self.kv_heads)  # (B, Hkv, T, Dh)
        if cache is not None:
            k, v = cache.append(layer, k, v)  # (B, Hkv, S, Dh)
        out = self.kernels.attention(q, self._repeat(k), self._repeat(v),
                                     key_padding_mask=key_mask, causal=x.shape[1] > 1)
        b, _, t, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))  # (B, T, D)


class DecoderLayer(nn.Module):
    """x + attn(norm(x)); x + mlp(norm(x)). (B, T, D) -> (B, T, D)."""

    def __init__(self, shape: DecoderShape, kernels: KernelSet) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(shape.width, shape.norm_eps)
        self.self_attn = GroupedQueryAttention(shape, kernels)
        self.post_attention_layernorm = RMSNorm(shape.width, shape.norm_eps)
        self.mlp = SwiGLU(width=shape.width, hidden=shape.ffn, bias=shape.mlp_bias)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], key_mask: Tensor | None,
                cache: KVCache | None = None, layer: int = 0) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, key_mask, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


def positions_from_mask(mask: Tensor) -> Tensor:
    """Rotary positions of a (B, S) validity mask: each real token's index among the real
    tokens of its row (left padding shifts nothing); padding gets 0. (B, S) long."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


class DecoderStack(nn.Module):
    """``layers`` decoder layers and a final RMSNorm over input embeddings.

    ``forward(x (B, T, D), mask (B, T), cache, positions, hook) -> hidden (B, T, D)``. With a
    ``cache`` the new keys and values are appended to it (incremental decoding: pass only
    the new tokens and their mask). Positions default to each real token's rank among its
    row's real tokens, counting the cached ones.
    """

    def __init__(self, shape: DecoderShape, kernels: KernelSet) -> None:
        super().__init__()
        self.shape = shape
        self.layers = nn.ModuleList(DecoderLayer(shape, kernels) for _ in range(shape.layers))
        self.norm = RMSNorm(shape.width, shape.norm_eps)
        self.rotary = RotaryEmbedding(head_dim=shape.head_dim, theta=shape.rope_theta,
                                      max_positions=shape.max_positions,
                                      scaling=shape.rope_scaling)

    def new_cache(self) -> KVCache:
        return KVCache()

    def _keys(self, x: Tensor, mask: Tensor | None, cache: KVCache | None
              ) -> tuple[Tensor | None, Tensor]:
        """(the (B, S) key mask, None when every key is real (the kernels' fast path); the
        new tokens' default rotary positions (B, T)), recording the tokens in ``cache``."""
        b, t = x.shape[:2]
        if cache is not None:
            new = mask if mask is not None else torch.ones(b, t, dtype=torch.bool,
                                                           device=x.device)
            return cache.extend(new)
        if mask is None or bool(mask.all()):
            return None, torch.arange(t, device=x.device)[None].expand(b, t)
        return mask, positions_from_mask(mask)

    def _check_length(self, keys: int) -> None:
        window = self.shape.sliding_window
        if window is not None and keys > window:
            raise ValueError(f"{keys} tokens exceed the sliding_window of {window}: mmcore "
                             "does not implement sliding-window attention, so it refuses "
                             "longer sequences rather than attend differently")

    def forward(self, x: Tensor, mask: Tensor | None = None, cache: KVCache | None = None,
                positions: Tensor | None = None, hook: LayerHook | None = None) -> Tensor:
        key_mask, default_positions = self._keys(x, mask, cache)
        self._check_length(cache.length if cache is not None else x.shape[1])
        rope = self.rotary(default_positions if positions is None else positions)  # (B, T, Dh)
        for i, layer in enumerate(self.layers):
            if hook is not None:
                x = hook(i, x)
            x = layer(x, rope, key_mask, cache, i)
        return self.norm(x)

"""A causal text decoder that cross-attends to context tokens, with KV-cached generation.

Its parameters live in a :class:`mmcore.layers.TransformerStack` (causal self-attention,
cross-attention, MLP), so teacher forcing is the stack's own forward. Generation with a
cache reuses the same blocks piece by piece (norms, projections, the kernel set's attention,
MLP) in the order :class:`mmcore.layers.TransformerBlock` applies them: self-attention keys
and values are appended per layer at each step, cross-attention keys and values are
computed once from the context. Generation runs the one loop of :mod:`mmcore.generation`
through :class:`CaptionRunner`. tests/test_captioning.py checks that cached generation
equals recomputing the whole sequence at every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mmcore.contract import Tokens
from mmcore.generation import GenerationConfig, generate
from mmcore.kernels import KernelSet
from mmcore.layers import LearnedPositions, TransformerBlock, TransformerStack
from mmcore.layers.attention import MultiHeadAttention


@dataclass
class LayerCache:
    """One layer's keys and values, (B, H, T, Dh): self-attention grows, cross is fixed."""

    self_k: Tensor | None
    self_v: Tensor | None
    cross_k: Tensor
    cross_v: Tensor


@dataclass
class DecoderCache:
    """Every layer's cache, the context's key mask (B, Nc) and the tokens seen so far."""

    layers: list[LayerCache]
    context_mask: Tensor | None
    length: int = 0


@dataclass
class Generation:
    """``ids (B, 1 + T)`` starting with BOS (``pad_id`` after a row's EOS), ``logits
    (B, T, V)`` each step's next-token logits, ``finished (B,)`` whether a row emitted EOS."""

    ids: Tensor
    logits: Tensor
    finished: Tensor


def _heads(attn: MultiHeadAttention, x: Tensor) -> Tensor:
    """(B, N, D) -> (B, H, N, Dh), as MultiHeadAttention splits."""
    b, n, _ = x.shape
    return x.view(b, n, attn.heads, attn.head_dim).transpose(1, 2)


def _merge(attn: MultiHeadAttention, out: Tensor) -> Tensor:
    """(B, H, N, Dh) -> the output projection of (B, N, D)."""
    b, _, n, _ = out.shape
    return attn.out_proj(out.transpose(1, 2).reshape(b, n, -1))


class CaptionDecoder(nn.Module):
    """ids (B, L) + context Tokens (B, Nc, Dc) -> next-token logits (B, L, V)."""

    def __init__(self, *, vocab_size: int, width: int, layers: int, heads: int,
                 max_length: int, context_width: int, kernels: KernelSet,
                 mlp_ratio: float = 4.0, tie_embeddings: bool = True) -> None:
        super().__init__()
        self.vocab_size, self.max_length = vocab_size, max_length
        self.embed = nn.Embedding(vocab_size, width)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.positions = LearnedPositions(length=max_length, width=width)
        self.stack = TransformerStack(width=width, layers=layers, heads=heads, kernels=kernels,
                                      mlp_ratio=mlp_ratio, cross_width=context_width)
        self.lm_head = None if tie_embeddings else nn.Linear(width, vocab_size, bias=False)

    def logits(self, x: Tensor) -> Tensor:
        """(B, L, D) -> (B, L, V) through the (tied or own) output projection."""
        if self.lm_head is None:
            return x @ self.embed.weight.t()
        return self.lm_head(x)

    def forward(self, ids: Tensor, context: Tokens, mask: Tensor | None = None) -> Tensor:
        """Teacher forcing: ids (B, L), ``mask (B, L)`` True for real tokens. -> (B, L, V)."""
        x = self.positions(self.embed(ids))  # (B, L, D)
        x = self.stack(x, mask, causal=True, context=context.x, context_mask=context.mask)
        return self.logits(x)

    # -- KV-cached decoding -------------------------------------------------------------

    def start_cache(self, context: Tokens) -> DecoderCache:
        """Cross-attention keys and values of every layer, computed once. (B, H, Nc, Dh)"""
        layers = []
        for block in self._blocks():
            cross = self._cross(block)
            layers.append(LayerCache(None, None, _heads(cross, cross.k_proj(context.x)),
                                     _heads(cross, cross.v_proj(context.x))))
        return DecoderCache(layers, context.mask)

    def step(self, ids: Tensor, cache: DecoderCache) -> Tensor:
        """The next ids (B, n) after ``cache.length`` tokens -> their logits (B, n, V);
        appends their keys and values to ``cache``."""
        n = ids.shape[1]
        if cache.length + n > self.max_length:
            raise ValueError(f"{cache.length + n} tokens exceed max_length {self.max_length}")
        x = self.embed(ids) + self.positions.weight[cache.length : cache.length + n]
        x = self.stack.pre_norm(x)
        for block, layer in zip(self._blocks(), cache.layers, strict=True):
            x = x + self._cached_self_attention(block, block.norm1(x), layer)
            x = x + self._cached_cross_attention(block, x, layer, cache.context_mask)
            x = x + block.mlp(block.norm2(x))
        cache.length += n
        return self.logits(self.stack.final_norm(x))

    def _cached_self_attention(self, block: TransformerBlock, h: Tensor,
                               layer: LayerCache) -> Tensor:
        attn = block.attn
        q = _heads(attn, attn.q_proj(h))  # (B, H, n, Dh)
        k, v = _heads(attn, attn.k_proj(h)), _heads(attn, attn.v_proj(h))
        if layer.self_k is not None and layer.self_v is not None:
            k, v = torch.cat([layer.self_k, k], dim=2), torch.cat([layer.self_v, v], dim=2)
        layer.self_k, layer.self_v = k, v  # (B, H, T, Dh)
        # the n new queries sit at the end of the T keys; causal aligns them there
        out = attn.kernels.attention(q, k, v, key_padding_mask=None, causal=q.shape[2] > 1)
        return _merge(attn, out)

    def _cached_cross_attention(self, block: TransformerBlock, x: Tensor, layer: LayerCache,
                                context_mask: Tensor | None) -> Tensor:
        cross = self._cross(block)
        assert block.cross_norm is not None
        q = _heads(cross, cross.q_proj(block.cross_norm(x)))
        out = cross.kernels.cross_attention(q, layer.cross_k, layer.cross_v,
                                            key_padding_mask=context_mask, causal=False)
        return _merge(cross, out)

    def _blocks(self) -> list[TransformerBlock]:
        return list(self.stack.blocks)  # type: ignore[arg-type]

    @staticmethod
    def _cross(block: TransformerBlock) -> MultiHeadAttention:
        assert block.cross_attn is not None, "the decoder blocks have cross-attention"
        return block.cross_attn

    @torch.no_grad()
    def generate(self, context: Tokens, *, bos_id: int, eos_id: int, max_new_tokens: int,
                 greedy: bool = True, temperature: float = 1.0, pad_id: int | None = None,
                 use_cache: bool = True, generator: torch.Generator | None = None
                 ) -> Generation:
        """Decode from BOS until every row emits EOS or ``max_new_tokens`` are made, through
        the one generation loop (:func:`mmcore.generation.generate`).

        ``use_cache=False`` recomputes the whole sequence at every step (the reference the
        cache is tested against). Sampling (``greedy=False``) divides logits by
        ``temperature``."""
        if 1 + max_new_tokens > self.max_length:
            raise ValueError(f"1 + {max_new_tokens} tokens exceed max_length {self.max_length}")
        ids = torch.full((context.x.shape[0], 1), bos_id, dtype=torch.long,
                         device=context.x.device)
        config = GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=eos_id,
                                  pad_token_id=pad_id, do_sample=not greedy,
                                  temperature=temperature, output_logits=True)
        out = generate(CaptionRunner(self, context, use_cache=use_cache), ids, config=config,
                       generator=generator)
        assert out.logits is not None
        return Generation(out.sequences, out.logits, out.finished)


@dataclass
class _RunnerState:
    """The loop's opaque cache: the KV cache, or the sequences so far without one."""

    cache: DecoderCache | None
    ids: Tensor | None = None


class CaptionRunner:
    """A :class:`CaptionDecoder` reading ``context`` (B, Nc, Dc) as a
    :class:`mmcore.generation.Decoder`: ``prefill`` builds the cache (cross-attention keys
    and values from the context) and runs the prompt (BOS); prompts are not padded."""

    def __init__(self, decoder: CaptionDecoder, context: Tokens, *,
                 use_cache: bool = True) -> None:
        self.decoder, self.context, self.use_cache = decoder, context, use_cache

    def _context(self, rows: int) -> Tokens:
        """The context repeated for ``rows`` rows (beams or samples per item). (R, Nc, Dc)"""
        times = rows // self.context.x.shape[0]
        if times == 1:
            return self.context
        mask = self.context.mask
        return Tokens(self.context.x.repeat_interleave(times, dim=0),
                      None if mask is None else mask.repeat_interleave(times, dim=0))

    def prefill(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, _RunnerState]:
        """Prompts (R, T) -> last-position logits (R, V) and the state."""
        if not bool(attention_mask.all()):
            raise ValueError("the captioning decoder takes unpadded prompts")
        context = self._context(input_ids.shape[0])
        if not self.use_cache:
            return self.decoder(input_ids, context)[:, -1], _RunnerState(None, input_ids)
        cache = self.decoder.start_cache(context)
        return self.decoder.step(input_ids, cache)[:, -1], _RunnerState(cache)

    def step(self, next_ids: Tensor, attention_mask: Tensor,
             state: _RunnerState) -> tuple[Tensor, _RunnerState]:
        """The chosen ids (R, 1) -> next logits (R, V)."""
        if state.cache is None:
            assert state.ids is not None
            state.ids = torch.cat([state.ids, next_ids], dim=1)
            return self.decoder(state.ids, self._context(state.ids.shape[0]))[:, -1], state
        return self.decoder.step(next_ids, state.cache)[:, -1], state

    def reorder_cache(self, state: _RunnerState, rows: Tensor) -> _RunnerState:
        """Keep row ``rows[i]`` (R,) as row ``i`` (beam search; rows stay with their item,
        so the cross-attention keys need no reordering)."""
        if state.ids is not None:
            state.ids = state.ids[rows]
        for layer in state.cache.layers if state.cache is not None else []:
            if layer.self_k is not None and layer.self_v is not None:
                layer.self_k, layer.self_v = layer.self_k[rows], layer.self_v[rows]
        return state

"""mmcore's LLaMA family: a decoder language model (LLaMA, Mistral, Qwen2) as ordinary
components, the ``hf-llama`` converter (import and export) and the ``llama-tiny`` preset.

Design. A causal LM is a composition, like every mmcore model::

    text: preprocessor (hf-tokenizer / byte-text) -> tokenizer ``lm-embedding``
    fusion ``decoder-lm``  (the trunk: RMSNorm, RoPE, GQA self-attention, SwiGLU, KV cache)
    heads  ``lm-head``     (hidden -> logits (B, T, V), tied or untied)
    objectives ``causal-lm`` (next-token cross-entropy; padding and labels -100 ignored)

* ``lm-embedding`` owns the (V, D) token table and emits :class:`LMTokens`: Tokens that
  also carry their ``ids`` and the embedding module. LLaVA splices projected image tokens
  into ``x`` at the positions whose id is ``<image>``; a tied ``lm-head`` multiplies by the
  embedding it was handed, so a tied weight has one owner and one state-dict key.
* ``decoder-lm`` is the trunk (:class:`mmcore.layers.decoder.DecoderStack`, HF's key
  names). ``hidden(embeds, mask, cache, positions, hook)`` is the programmatic entry:
  ``cache`` (:class:`mmcore.layers.kv_cache.KVCache`) makes decoding incremental;
  ``hook(i, x) -> x`` runs before layer ``i``, where Flamingo's gated cross-attention
  enters a frozen LM; ``layers`` exposes the layer list. Positions are each real token's
  rank in its row, so left-padded batches match unpadded prompts.
* As a text decoder head inside another family's component, build the same three
  modules (or a DecoderStack) there; :class:`CausalLMRunner` adapts any of them to the
  one generation loop (``prefill``, ``step``, ``reorder_cache``).
* Costs are analytic (``mmcore inspect`` builds nothing); ``flops_per_token`` and
  ``kv_cache_bytes`` give generation figures, and the trunk's and head's costs carry a
  :class:`mmcore.cost.GenerationCost` that ``mmcore inspect --context N`` reports.
* Command line: ``mmcore generate`` drives text-only causal LMs through the
  ``text-lm`` generator (:mod:`mmcore_llama.cli`); ``mmcore chat`` is this plugin's verb
  (:mod:`mmcore_llama.chat`, Jinja-free chat templates). The reusable text pieces
  (:func:`text_codec`, :func:`left_pad`, :func:`check_room`, :class:`TextStream`,
  :func:`generate_text`) live in :mod:`mmcore_llama.text` for families built on this LM.
"""

from __future__ import annotations

from pathlib import Path

from mmcore import hookimpl
from mmcore.hookspecs import Register
from mmcore_llama.components import (
    CausalLM,
    CausalLMConfig,
    DecoderLM,
    DecoderLMConfig,
    LMEmbedding,
    LMEmbeddingConfig,
    LMHead,
    LMHeadConfig,
    LMTokens,
    build_causal_lm,
    build_decoder_lm,
    build_lm_embedding,
    build_lm_head,
    example_causal_lm,
    example_fused,
    example_lm_ids,
    lm_parts,
)
from mmcore_llama.convert import make_converter
from mmcore_llama.costs import (
    causal_lm_cost,
    decoder_lm_cost,
    flops_per_token,
    kv_cache_bytes,
    lm_embedding_cost,
    lm_head_cost,
)
from mmcore_llama.generation import CausalLMRunner
from mmcore_llama.text import (
    TextCodec,
    TextResult,
    TextStream,
    check_room,
    generate_text,
    left_pad,
    text_codec,
)

__version__ = "0.1.0"
__all__ = ["CausalLM", "CausalLMRunner", "DecoderLM", "LMEmbedding", "LMHead", "LMTokens",
           "TextCodec", "lm_parts", "TextResult", "TextStream", "check_room", "flops_per_token",
           "generate_text", "kv_cache_bytes", "left_pad", "text_codec"]

SPECS = Path(__file__).resolve().parent / "specs"


@hookimpl
def register_tokenizers(register: Register) -> None:
    register("lm-embedding", build_lm_embedding, config=LMEmbeddingConfig,
             tiny={"vocab_size": 32, "width": 16, "context_length": 8},
             example=example_lm_ids, cost=lm_embedding_cost,
             summary="a language model's token embedding (ids kept for splicing, tied heads)")


@hookimpl
def register_fusions(register: Register) -> None:
    register("decoder-lm", build_decoder_lm, config=DecoderLMConfig, cost=decoder_lm_cost,
             tiny={"text": "alpha", "layers": 2, "heads": 4, "kv_heads": 2, "ffn": 24},
             summary="LLaMA-family causal decoder trunk (RMSNorm, RoPE, GQA, SwiGLU, KV cache)")


@hookimpl
def register_heads(register: Register) -> None:
    register("lm-head", build_lm_head, config=LMHeadConfig, cost=lm_head_cost,
             tiny={"text": "alpha", "vocab_size": 11, "width": 8}, example=example_fused,
             summary="hidden states -> next-token logits (B, T, V), tied or untied")


@hookimpl
def register_objectives(register: Register) -> None:
    register("causal-lm", build_causal_lm, config=CausalLMConfig, cost=causal_lm_cost,
             tiny={}, example=example_causal_lm,
             summary="next-token cross-entropy; padding and labels -100 are ignored")


@hookimpl
def register_converters(register: Register) -> None:
    register("hf-llama", make_converter,
             summary="Hugging Face LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM "
                     "folders (config.json, safetensors single or sharded), in and out")


@hookimpl
def register_presets(register: Register) -> None:
    register("llama-tiny", SPECS / "llama-tiny.yaml",
             summary="a tiny byte-level LLaMA-architecture LM (GQA, RoPE, SwiGLU, tied head)")



@hookimpl
def register_generators(register: Register) -> None:
    from mmcore_llama.cli import make_text_generator

    register("text-lm", make_text_generator,
             summary="text-only causal LMs (decoder-lm): stream tokens as they come")


@hookimpl
def register_commands(register: Register) -> None:
    from mmcore_llama import chat

    register("chat", chat.add_arguments, chat.run, summary=chat.SUMMARY)

"""The names an HF LLaMA-family checkpoint and its mmcore model share: the families the
converter reads, the spec's text modality and head names, and the key map between them
(used by the importer, the exporter and LLaVA's converter)."""

from __future__ import annotations

from mmcore.convert import hf

FAMILIES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
            "qwen2": "Qwen2ForCausalLM"}
TEXT, HEAD = "text", "lm"

#: HF keys -> mmcore keys
HF_TO_MMCORE = hf.KeyMap(
    [("model.embed_tokens.weight", f"tokenizers.{TEXT}.embed_tokens.weight"),
     ("model.layers.{}.*", "fusion.stack.layers.{}.*"),
     ("model.norm.weight", "fusion.stack.norm.weight"),
     ("lm_head.weight", f"heads.{HEAD}.weight")],
    ignore=["model.layers.{}.self_attn.rotary_emb.inv_freq", "model.rotary_emb.inv_freq"])

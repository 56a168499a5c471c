"""mmcore LM -> a Hugging Face folder (config.json, model.safetensors, tokenizer.json when
the model's text preprocessor has one) that ``transformers``' ``*ForCausalLM`` loads.

The family is chosen from the trunk: q/k/v biases only -> ``qwen2``; a sliding window ->
``mistral``; otherwise ``llama`` (whose ``attention_bias``/``mlp_bias`` cover the rest).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from mmcore.convert import hf
from mmcore.errors import CheckpointError
from mmcore_llama.components import DecoderLM, DecoderLMConfig, LMEmbedding, LMHead
from mmcore_llama.keys import FAMILIES, HEAD, HF_TO_MMCORE

#: mmcore rope_scaling field -> HF rope parameter
_ROPE_OUT = {"type": "rope_type", "factor": "factor",
             "original_max_positions": "original_max_position_embeddings",
             "low_freq_factor": "low_freq_factor", "high_freq_factor": "high_freq_factor",
             "beta_fast": "beta_fast", "beta_slow": "beta_slow",
             "attention_factor": "attention_factor", "mscale": "mscale",
             "mscale_all_dim": "mscale_all_dim", "truncate": "truncate"}
_ROPE_FIELDS = {"linear": ("factor",), "dynamic": ("factor",),
                "llama3": ("factor", "original_max_positions", "low_freq_factor",
                           "high_freq_factor"),
                "yarn": ("factor", "original_max_positions", "beta_fast", "beta_slow",
                         "attention_factor", "mscale", "mscale_all_dim", "truncate")}


def lm_parts(model: Any) -> tuple[LMEmbedding, DecoderLM, LMHead]:
    """The (embedding, trunk, head) of an mmcore LM; CheckpointError naming what differs."""
    if not isinstance(model.fusion, DecoderLM):
        raise CheckpointError(f"hf-llama exports a decoder-lm model; this one's fusion is "
                              f"{type(model.fusion).__name__}")
    text = model.fusion.cfg.text
    embedding = model.tokenizers[text] if text in model.tokenizers else None  # noqa: SIM401
    heads = [h for h in model.heads.values() if isinstance(h, LMHead)]
    if not isinstance(embedding, LMEmbedding) or len(heads) != 1:
        raise CheckpointError(f"hf-llama exports modality {text!r} with an lm-embedding "
                              "tokenizer and exactly one lm-head")
    if text in model.encoders:
        raise CheckpointError(f"modality {text!r} has an encoder; HF causal LMs have none")
    return embedding, model.fusion, heads[0]


def family(cfg: DecoderLMConfig) -> str:
    if cfg.qkv_bias and not cfg.attention_bias and not cfg.mlp_bias:
        return "qwen2"
    if cfg.qkv_bias:
        raise CheckpointError("q/k/v biases together with attention_bias or mlp_bias have "
                              "no Hugging Face causal-LM class")
    if cfg.sliding_window is not None:
        if cfg.attention_bias or cfg.mlp_bias:
            raise CheckpointError("Mistral has no attention_bias or mlp_bias")
        return "mistral"
    return "llama"


def _rope(cfg: DecoderLMConfig) -> dict[str, Any] | None:
    scaling = cfg.rope_scaling.model_dump()
    if scaling["type"] == "default":
        return None
    out = {"rope_type": scaling["type"]}
    out.update({_ROPE_OUT[k]: scaling[k] for k in _ROPE_FIELDS[scaling["type"]]
                if scaling[k] is not None})
    return out


def hf_config(embedding: LMEmbedding, trunk: DecoderLM, head: LMHead) -> dict[str, Any]:
    """config.json for the model (legacy ``rope_theta``/``rope_scaling`` keys, which every
    transformers version reads)."""
    cfg, shape, kind = trunk.cfg, trunk.stack.shape, family(trunk.cfg)
    config: dict[str, Any] = {
        "architectures": [FAMILIES[kind]], "model_type": kind,
        "vocab_size": embedding.cfg.vocab_size, "hidden_size": shape.width,
        "intermediate_size": shape.ffn, "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads, "num_key_value_heads": shape.kv_heads,
        "head_dim": shape.head_dim, "hidden_act": hf.hf_activation("silu"),
        "max_position_embeddings": cfg.max_positions, "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta, "rope_scaling": _rope(cfg),
        "tie_word_embeddings": head.cfg.tied, "torch_dtype": "float32",
        "bos_token_id": embedding.cfg.bos_token_id, "eos_token_id": embedding.cfg.eos_token_id,
        "pad_token_id": embedding.cfg.pad_token_id,
    }
    if kind == "llama":
        config.update(attention_bias=cfg.attention_bias, mlp_bias=cfg.mlp_bias,
                      pretraining_tp=1)
    if kind == "mistral":
        config["sliding_window"] = cfg.sliding_window
    if kind == "qwen2":
        config.update(use_sliding_window=False, sliding_window=None)
    return config


def _tokenizer_file(model: Any, text: str) -> Path | None:
    pre = model.preprocessors.get(text)
    path = getattr(getattr(pre, "cfg", None), "path", None)
    return Path(path) if path and Path(path).is_file() else None


def export_folder(model: Any, out: Path) -> None:
    """Write ``model`` as an HF causal-LM folder at ``out`` (created; files overwritten)."""
    import json

    embedding, trunk, head = lm_parts(model)
    config = hf_config(embedding, trunk, head)
    back = HF_TO_MMCORE.inverse(target="Hugging Face")
    name = next(n for n, h in model.heads.items() if h is head)
    state = {k.replace(f"heads.{name}.", f"heads.{HEAD}.", 1): v
             for k, v in model.state_dict().items() if not k.startswith("objectives.")}
    tensors = back.apply(state, source="the mmcore model")
    out.mkdir(parents=True, exist_ok=True)
    (out / hf.CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
              str(out / hf.SAFETENSORS), metadata={"format": "pt"})
    tokenizer = _tokenizer_file(model, trunk.cfg.text)
    if tokenizer is not None:
        shutil.copyfile(tokenizer, out / "tokenizer.json")

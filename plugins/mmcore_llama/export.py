"""mmcore LM -> a Hugging Face folder (config.json, model.safetensors and, when the
model's text preprocessor reads a tokenizer.json, tokenizer.json + tokenizer_config.json +
special_tokens_map.json) that ``transformers``' ``*ForCausalLM`` and ``AutoTokenizer``
load. A model with the built-in ``bytes`` vocabulary exports its weights only.

The family is chosen from the trunk: q/k/v biases only -> ``qwen2``; a sliding window ->
``mistral``; otherwise ``llama`` (whose ``attention_bias``/``mlp_bias`` cover the rest).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from mmcore.convert import hf
from mmcore.convert.hf_export import token_names, write_json, write_tokenizer, write_weights
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


def tokenizer_files(model: Any, text: str) -> dict[str, bytes]:
    """The tokenizer.json the text preprocessor reads (``hf-tokenizer``, ``llava-chat``)
    and the sidecars it came with (:func:`mmcore.assets.asset_files`), by file name; {}
    for a model that reads none (the built-in ``bytes`` vocabulary)."""
    from mmcore.assets import asset_files

    files = asset_files(model).get(f"modalities.{text}.preprocessor.path", {})
    if not files:
        return {}
    main = next(iter(files))
    return {"tokenizer.json": files[main], **{k: v for k, v in files.items() if k != main}}


def write_lm_tokenizer(model: Any, embedding: LMEmbedding, text: str, out: Path) -> bool:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json for the LM's text:
    the source's own files where the model carries them, else generated (special tokens
    from the embedding's bos/eos/pad ids); for ``byte-text`` an equivalent tokenizer.json.
    Otherwise (the ``bytes`` vocabulary of ``llava-chat``, no preprocessor) nothing is
    written, with a warning: -> whether tokenizer files were written."""
    from mmcore_text.preprocess import BYTE_SPECIAL, ByteTextPreprocessor, byte_text_tokenizer_json

    pre = model.preprocessors.get(text)
    files = tokenizer_files(model, text)
    if not files and isinstance(pre, ByteTextPreprocessor):
        files = {"tokenizer.json": byte_text_tokenizer_json(pre.cfg.lowercase)}
    if not files:
        warnings.warn(f"the text preprocessor ({type(pre).__name__ if pre else 'none'}) has "
                      "no Hugging Face tokenizer: exported the weights and configs only, "
                      "without tokenizer files", stacklevel=2)
        return False
    content = files.pop("tokenizer.json")
    ids = {"bos_token": embedding.cfg.bos_token_id, "eos_token": _first(embedding.cfg.eos_token_id),
           "pad_token": embedding.cfg.pad_token_id}
    special = token_names(content, ids)
    if isinstance(pre, ByteTextPreprocessor):
        special = {**BYTE_SPECIAL, **special}
    write_tokenizer(out, content, special, sidecars=files,
                    model_max_length=getattr(pre, "context_length", None))
    return True


def _first(ids: int | list[int] | None) -> int | None:
    return ids[0] if isinstance(ids, list) else ids


def export_folder(model: Any, out: Path) -> None:
    """Write ``model`` as an HF causal-LM folder at ``out`` (created; files overwritten):
    config.json, model.safetensors and, when the model reads one, the tokenizer files."""
    embedding, trunk, head = lm_parts(model)
    config = hf_config(embedding, trunk, head)
    back = HF_TO_MMCORE.inverse(target="Hugging Face")
    name = next(n for n, h in model.heads.items() if h is head)
    state = {k.replace(f"heads.{name}.", f"heads.{HEAD}.", 1): v
             for k, v in model.state_dict().items() if not k.startswith("objectives.")}
    tensors = back.apply(state, source="the mmcore model")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / hf.CONFIG, config)
    write_weights(out, tensors)
    write_lm_tokenizer(model, embedding, trunk.cfg.text, out)

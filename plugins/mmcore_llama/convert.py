"""Hugging Face ``LlamaForCausalLM`` / ``MistralForCausalLM`` / ``Qwen2ForCausalLM`` folders
<-> mmcore, through :mod:`mmcore.convert.hf`. Nothing here imports transformers.

What is implemented (anything else in config.json is refused by name, never approximated):
``hidden_act`` silu; grouped-/multi-query attention (``num_key_value_heads``), ``head_dim``;
RoPE ``default``, ``linear``, ``dynamic``, ``llama3`` and ``yarn`` (``rope_scaling`` or
``rope_parameters``); LLaMA ``attention_bias`` and ``mlp_bias``; Qwen2's q/k/v biases;
Mistral's ``sliding_window`` (sequences longer than the window are refused at run time);
tied or untied output embeddings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmcore.convert import hf
from mmcore.errors import CheckpointError
from mmcore_llama.keys import FAMILIES, HEAD, HF_TO_MMCORE, TEXT

TOKENIZER_FILE = "tokenizer.json"
REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads")
#: HF rope parameter -> the decoder-lm's rope_scaling field
ROPE_KEYS = {"rope_type": "type", "type": "type", "factor": "factor",
             "original_max_position_embeddings": "original_max_positions",
             "low_freq_factor": "low_freq_factor", "high_freq_factor": "high_freq_factor",
             "beta_fast": "beta_fast", "beta_slow": "beta_slow",
             "attention_factor": "attention_factor", "mscale": "mscale",
             "mscale_all_dim": "mscale_all_dim", "truncate": "truncate"}
ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")
#: config keys whose presence (with a non-trivial value) mmcore does not implement
UNSUPPORTED = ("quantization_config", "partial_rotary_factor")
def _positive(config: Mapping[str, Any], key: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise CheckpointError(f"config.json: {key} must be a positive integer, got {value!r}")
    return value


def _refuse(key: str, value: Any, why: str) -> CheckpointError:
    return CheckpointError(f"config.json: {key} = {value!r} is not supported: {why}")


def check_config(config: Mapping[str, Any]) -> None:
    """CheckpointError naming the first config field mmcore does not implement."""
    family = config.get("model_type")
    if family not in FAMILIES:
        raise CheckpointError(f"config.json: model_type {family!r} is not one of "
                              f"{', '.join(FAMILIES)}")
    act = hf.activation(config.get("hidden_act", "silu"))
    if act != "silu":
        raise _refuse("hidden_act", config.get("hidden_act"), "LLaMA-family MLPs are SwiGLU "
                      "(silu); mmcore's SwiGLU implements silu only")
    if int(config.get("pretraining_tp") or 1) > 1:
        raise _refuse("pretraining_tp", config["pretraining_tp"], "only 1 is implemented")
    for key in UNSUPPORTED:
        if config.get(key) not in (None, 1, 1.0):
            raise _refuse(key, config[key], "mmcore does not implement it")
    if family == "qwen2" and config.get("use_sliding_window"):
        raise _refuse("use_sliding_window", True, "sliding-window attention is not implemented")
    kinds = set(config.get("layer_types") or ["full_attention"])
    if kinds != {"full_attention"}:
        raise _refuse("layer_types", sorted(kinds), "only full_attention is implemented")


def rope_params(config: Mapping[str, Any]) -> tuple[float, dict[str, Any]]:
    """(rope_theta, the decoder-lm's rope_scaling) from ``rope_parameters`` (transformers 5)
    or ``rope_theta`` + ``rope_scaling`` (earlier)."""
    given = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    theta = given.pop("rope_theta", None) or config.get("rope_theta") or 10000.0
    kind = given.get("rope_type", given.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise _refuse("rope_scaling.rope_type", kind,
                      f"mmcore implements {', '.join(ROPE_TYPES)}")
    unknown = sorted(k for k in given if k not in ROPE_KEYS)
    if unknown:
        raise _refuse(f"rope_scaling.{unknown[0]}", given[unknown[0]],
                      f"mmcore does not implement it for rope_type {kind!r}")
    scaling = {ROPE_KEYS[k]: v for k, v in given.items() if v is not None}
    scaling["type"] = kind
    if kind in ("llama3", "yarn"):
        scaling.setdefault("original_max_positions", config.get("max_position_embeddings"))
    return float(theta), scaling


def _fusion(config: Mapping[str, Any]) -> dict[str, Any]:
    heads = _positive(config, "num_attention_heads")
    theta, scaling = rope_params(config)
    fusion: dict[str, Any] = {
        "type": "decoder-lm", "text": TEXT, "layers": _positive(config, "num_hidden_layers"),
        "heads": heads, "kv_heads": config.get("num_key_value_heads") or heads,
        "ffn": _positive(config, "intermediate_size"),
        "norm_eps": float(config.get("rms_norm_eps", 1e-6)), "rope_theta": theta,
        "rope_scaling": scaling,
        "max_positions": int(config.get("max_position_embeddings", 2048)),
        "attention_bias": bool(config.get("attention_bias", False)),
        "qkv_bias": config.get("model_type") == "qwen2",
        "mlp_bias": bool(config.get("mlp_bias", False)),
    }
    if config.get("head_dim"):
        fusion["head_dim"] = _positive(config, "head_dim")
    if config.get("model_type") == "mistral" and config.get("sliding_window"):
        fusion["sliding_window"] = _positive(config, "sliding_window")
    return fusion


def _context(config: Mapping[str, Any]) -> int:
    """The longest sequence the model is meant for: max_position_embeddings, times the
    factor of dynamic scaling (which exists to run beyond it)."""
    context = int(config.get("max_position_embeddings", 2048))
    _, scaling = rope_params(config)
    if scaling["type"] == "dynamic":
        context = int(context * float(scaling.get("factor", 1.0)))
    return context


def spec_from_config(config: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """The mmcore spec (a mapping for :func:`mmcore.load_spec`) of an HF LM folder."""
    check_config(config)
    for key in REQUIRED:
        _positive(config, key)
    vocab, width = config["vocab_size"], config["hidden_size"]
    context = _context(config)
    embedding = {"type": "lm-embedding", "vocab_size": vocab, "width": width,
                 "context_length": context}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if config.get(key) is not None:
            embedding[key] = config[key]
    text: dict[str, Any] = {"tokenizer": embedding}
    if (folder / TOKENIZER_FILE).is_file():
        text = {"preprocessor": {"type": "hf-tokenizer", "context_length": context,
                                 "path": str((folder / TOKENIZER_FILE).resolve())}, **text}
    tied = bool(config.get("tie_word_embeddings", False))  # False: the three classes' default
    return {
        "name": folder.resolve().name,
        "description": f"{FAMILIES[config['model_type']]} imported from {folder.name}",
        "modalities": {TEXT: text},
        "fusion": _fusion(config),
        "heads": {HEAD: {"type": "lm-head", "text": TEXT, "vocab_size": vocab, "tied": tied}},
        "objectives": {"lm": {"type": "causal-lm", "head": HEAD, "text": TEXT}},
    }


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read it: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _token_ids(tokenizer: Mapping[str, Any]) -> dict[str, int]:
    """Token text -> id from a tokenizer.json: its vocabulary and added tokens."""
    vocab = (tokenizer.get("model") or {}).get("vocab") or {}
    ids = ({str(k): int(v) for k, v in vocab.items()} if isinstance(vocab, dict)
           else {str(entry[0]): i for i, entry in enumerate(vocab)})  # Unigram: [piece, score]
    ids.update({str(t["content"]): int(t["id"]) for t in tokenizer.get("added_tokens") or []})
    return ids


def _token_name(value: Any) -> str | None:
    """A tokenizer_config.json special token: a string or ``{"content": ...}``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def check_special_tokens(config: Mapping[str, Any], folder: Path) -> None:
    """CheckpointError when config.json's bos/eos/pad ids disagree with the tokenizer: the
    token tokenizer_config.json names must have that id in tokenizer.json, and an id must
    lie in the tokenizer's vocabulary."""
    if not (folder / TOKENIZER_FILE).is_file():
        return
    ids = _token_ids(_read_json(folder / TOKENIZER_FILE))
    names = (_read_json(folder / "tokenizer_config.json")
             if (folder / "tokenizer_config.json").is_file() else {})
    size = max(ids.values(), default=-1) + 1
    for kind in ("bos", "eos", "pad"):
        wanted = config.get(f"{kind}_token_id")
        if wanted is None:
            continue
        allowed = wanted if isinstance(wanted, list) else [wanted]
        bad = [i for i in allowed if not isinstance(i, int) or not 0 <= i < size]
        if bad:
            raise CheckpointError(f"{folder}: config.json has {kind}_token_id {wanted}, but "
                                  f"tokenizer.json has {size} tokens (ids 0-{size - 1})")
        name = _token_name(names.get(f"{kind}_token"))
        if name is None:
            continue
        if name not in ids:
            raise CheckpointError(f"{folder}: tokenizer_config.json's {kind}_token {name!r} "
                                  "is not a token of tokenizer.json")
        if ids[name] not in allowed:
            raise CheckpointError(f"{folder}: {kind}_token {name!r} is id {ids[name]} in "
                                  f"tokenizer.json but config.json has {kind}_token_id "
                                  f"{wanted}; the two files disagree (fix one of them)")


def tensors_from_folder(folder: Path, tied: bool) -> dict[str, Tensor]:
    """The folder's weights renamed to mmcore's keys; a tied model's stored ``lm_head``
    (some savers keep it) must equal the embedding and is dropped."""
    state = hf.read_weights(folder)
    if tied and "lm_head.weight" in state:
        if not torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"]):
            raise CheckpointError(f"{folder}: tie_word_embeddings is true but lm_head.weight "
                                  "differs from model.embed_tokens.weight")
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    return HF_TO_MMCORE.apply(state, source=str(folder))


class HFLlamaConverter:
    """``hf-llama``: LLaMA, Mistral and Qwen2 causal-LM folders, in and out."""

    def detect(self, source: Path) -> bool:
        return (source.is_dir() and hf.config_model_type(source) in FAMILIES
                and hf.has_weights(source))

    def to_mmcore(self, source: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
        source = Path(source)
        if not source.is_dir():
            raise CheckpointError(f"{source} is not a folder (an HF causal-LM checkpoint is a "
                                  "folder with config.json and model.safetensors)")
        config = hf.read_config(source)
        check_special_tokens(config, source)
        spec = spec_from_config(config, source)
        return spec, tensors_from_folder(source, spec["heads"][HEAD]["tied"])

    def from_mmcore(self, model: Any, out: Path) -> None:
        from mmcore_llama.export import export_folder

        export_folder(model, Path(out))


def make_converter() -> HFLlamaConverter:
    return HFLlamaConverter()

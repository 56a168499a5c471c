"""``hf-idefics``: a Hugging Face ``IdeficsForVisionText2Text`` folder (the Flamingo-style
model in transformers) -> mmcore, through :mod:`mmcore.convert.hf`. Nothing here imports
transformers.

Implemented (anything else is refused by name, never approximated): the CLIP-style vision
tower (its last hidden state, CLS included, no post-layernorm: what Idefics feeds on), the
Perceiver Resampler with or without ``use_resampler`` (``resampler_head_dim`` apart from
the width, ReLU MLP), gated cross-attention before every ``cross_layer_interval``-th layer
from layer 0 with ``alpha_type`` ``float`` or ``vector``, SwiGLU dense parts, RMSNorm, the
LLaMA decoder (multi-head, default RoPE), and the decoupled embedding / head
(``additional_vocab_size``), whose extra rows are appended to the tables. Refused:
``qk_layer_norms``, ``qk_layer_norms_perceiver``, other ``alpha_type`` values, RoPE
scaling, ``hidden_act`` other than silu, ``tie_word_embeddings``. A ``tokenizer.json`` in the
folder becomes the text modality's ``hf-tokenizer`` preprocessor. Export:
:mod:`mmcore_flamingo.export`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmcore.convert import hf
from mmcore.errors import CheckpointError
from mmcore_clip.hf_clip import HF_TO_MMCORE as CLIP_KEYS

TEXT, IMAGE, HEAD = "text", "image", "lm"
VISION = "model.vision_model."
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
#: config fields whose non-default values mmcore does not implement: (key, allowed, why)
REFUSED: tuple[tuple[str, tuple[Any, ...], str], ...] = (
    ("qk_layer_norms", (False, None), "layer norms after q and k in cross-attention"),
    ("alpha_type", ("float", "vector", None), "gates are tanh(alpha), float or vector"),
    ("hidden_act", ("silu", None), "the LM's SwiGLU uses silu"),
    ("tie_word_embeddings", (False, None), "Idefics' decoupled head is untied"),
)
XATTN_RULES = [
    ("input_layernorm.weight", "attn_norm.weight"),
    ("cross_attn.q_proj.weight", "attn.q_proj.weight"),
    ("cross_attn.k_proj.weight", "attn.k_proj.weight"),
    ("cross_attn.v_proj.weight", "attn.v_proj.weight"),
    ("cross_attn.o_proj.weight", "attn.out_proj.weight"),
    ("post_attention_layernorm.weight", "ff_norm.weight"),
    ("mlp.*", "ff.*"),
    ("alpha_cross_attn", "attn_gate"),
    ("alpha_dense", "ff_gate"),
]
RESAMPLER_RULES = [
    ("0.context_layer_norm.*", "input_norm.*"),
    ("0.latents_layer_norm.*", "latent_norm.*"),
    ("0.q_proj.weight", "attn.q_proj.weight"),
    ("0.k_proj.weight", "attn.k_proj.weight"),
    ("0.v_proj.weight", "attn.v_proj.weight"),
    ("0.output_proj.weight", "attn.out_proj.weight"),
    ("1.ln.*", "mlp_norm.*"),
    ("1.fc.weight", "mlp.fc1.weight"),
    ("1.c_proj.weight", "mlp.fc2.weight"),
]


def _refuse(key: str, value: Any, why: str) -> CheckpointError:
    return CheckpointError(f"config.json: {key} = {value!r} is not supported by hf-idefics "
                           f"({why})")


def check_config(config: Mapping[str, Any]) -> None:
    """CheckpointError naming the first Idefics config field mmcore does not implement."""
    if config.get("model_type") != "idefics":
        raise CheckpointError(f"config.json: model_type {config.get('model_type')!r} is not "
                              "'idefics' (Idefics2/3 are other architectures)")
    for key, allowed, why in REFUSED:
        if config.get(key) not in allowed:
            raise _refuse(key, config[key], why)
    perceiver = config.get("perceiver_config") or {}
    if perceiver.get("qk_layer_norms_perceiver"):
        raise _refuse("perceiver_config.qk_layer_norms_perceiver", True,
                      "layer norms after q and k in the resampler")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise _refuse("rope_parameters.rope_type", rope.get("rope_type", rope.get("type")),
                      "only default RoPE")
    vision = config.get("vision_config") or {}
    for key in ("image_size", "patch_size"):
        if not isinstance(vision.get(key, 1), int):
            raise _refuse(f"vision_config.{key}", vision[key], "square sizes (an int)")


def _vision(config: Mapping[str, Any]) -> dict[str, Any]:
    v = {"embed_dim": 768, "image_size": 224, "patch_size": 14, "num_hidden_layers": 32,
         "num_attention_heads": 16, "intermediate_size": 5120, "hidden_act": "gelu",
         "layer_norm_eps": 1e-5, "num_channels": 3, **(config.get("vision_config") or {})}
    ratio = v["intermediate_size"] / v["embed_dim"]
    if int(v["embed_dim"] * ratio) != v["intermediate_size"]:
        raise _refuse("vision_config.intermediate_size", v["intermediate_size"],
                      "not representable as embed_dim x mlp_ratio")
    return {
        "preprocessor": {"type": "interleaved-images", "size": v["image_size"],
                         "mean": CLIP_MEAN, "std": CLIP_STD, "center_crop": False},
        "tokenizer": {"type": "patch-embedding", "image_size": v["image_size"],
                      "patch_size": v["patch_size"], "width": v["embed_dim"],
                      "channels": v["num_channels"], "cls_token": True},
        "encoder": {"type": "vit-features", "layers": v["num_hidden_layers"],
                    "heads": v["num_attention_heads"], "mlp_ratio": ratio,
                    "act": hf.activation(v["hidden_act"], "vision_config.hidden_act"),
                    "norm_eps": v["layer_norm_eps"], "pre_norm": True, "final_norm": True,
                    "feature_layer": -1, "select": "full"},
    }


def _resampler(config: Mapping[str, Any]) -> dict[str, Any] | None:
    if not config.get("use_resampler"):
        return None
    p = {"resampler_n_latents": 64, "resampler_depth": 6, "resampler_n_heads": 16,
         "resampler_head_dim": 96, **(config.get("perceiver_config") or {})}
    return {"num_latents": p["resampler_n_latents"], "layers": p["resampler_depth"],
            "heads": p["resampler_n_heads"], "head_dim": p["resampler_head_dim"],
            "mlp_ratio": 4.0, "act": "relu"}


def spec_from_idefics_config(config: Mapping[str, Any], folder: Path,
                             image_token_id: int | None = None) -> dict[str, Any]:
    """The mmcore spec of an HF Idefics folder; ``image_token_id``: the ``<image>`` id
    (default: the first additional id, vocab_size, as Idefics' tokenizer adds it)."""
    check_config(config)
    vocab = config.get("vocab_size", 32000) + config.get("additional_vocab_size", 0)
    width, layers = config.get("hidden_size", 4096), config.get("num_hidden_layers", 32)
    context = config.get("max_position_embeddings", 2048)
    rope = config.get("rope_parameters") or {}
    media = config.get("vocab_size", 32000) if image_token_id is None else image_token_id
    fusion = {"type": "flamingo", "text": TEXT, "image": IMAGE, "media_token_id": media,
              "layers": layers, "heads": config.get("num_attention_heads", 32),
              "ffn": config.get("intermediate_size", 11008),
              "norm_eps": config.get("rms_norm_eps", 1e-6),
              "rope_theta": rope.get("rope_theta", config.get("rope_theta", 10000.0)),
              "max_positions": context, "every": config.get("cross_layer_interval", 1),
              "xattn_ffw": "swiglu", "xattn_ffn": config.get("intermediate_size", 11008),
              "xattn_norm": "rmsnorm", "gate": config.get("alpha_type") or "float",
              "dense_without_media": True, "freeze_lm": True,
              "resampler": _resampler(config)}
    tokenizer = {"type": "lm-embedding", "vocab_size": vocab, "width": width,
                 "context_length": context, "bos_token_id": config.get("bos_token_id"),
                 "eos_token_id": config.get("eos_token_id"),
                 "pad_token_id": config.get("pad_token_id")}
    text: dict[str, Any] = {"tokenizer": tokenizer}
    if (folder / "tokenizer.json").is_file():
        text = {"preprocessor": {"type": "hf-tokenizer", "context_length": context,
                                 "path": str((folder / "tokenizer.json").resolve())}, **text}
    return {"name": folder.resolve().name,
            "description": f"IdeficsForVisionText2Text imported from {folder.name}",
            "modalities": {IMAGE: _vision(config), TEXT: text},
            "fusion": fusion,
            "heads": {HEAD: {"type": "lm-head", "text": TEXT, "vocab_size": vocab}},
            "objectives": {"lm": {"type": "causal-lm", "head": HEAD, "text": TEXT}}}


def _key_map() -> hf.KeyMap:
    rules = [(VISION + old[len("vision_model."):], new) for old, new in CLIP_KEYS.rules
             if old.startswith("vision_model.")]
    rules += [("model.embed_tokens.weight", f"tokenizers.{TEXT}.embed_tokens.weight"),
              ("model.layers.{}.*", "fusion.stack.layers.{}.*"),
              ("model.norm.weight", "fusion.stack.norm.weight"),
              ("lm_head.weight", f"heads.{HEAD}.weight"),
              ("model.perceiver_resampler.latents", "fusion.resampler.latents"),
              ("model.perceiver_resampler.layer_norm.*", "fusion.resampler.final_norm.*")]
    rules += [(f"model.gated_cross_attn_layers.{{}}.{old}", f"fusion.xattn.{{}}.{new}")
              for old, new in XATTN_RULES]
    rules += [(f"model.perceiver_resampler.blocks.{{}}.{old}",
               f"fusion.resampler.layers.{{}}.{new}") for old, new in RESAMPLER_RULES]
    return hf.KeyMap(rules, ignore=[VISION + "embeddings.position_ids"])


HF_TO_MMCORE = _key_map()
_XATTN = re.compile(r"^model\.gated_cross_attn_layers\.(\d+)\.")


def _merge_decoupled(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Append the additional embedding / head rows to the main tables."""
    for main, extra in (("model.embed_tokens.weight",
                         "model.embed_tokens.additional_embedding.weight"),
                        ("lm_head.weight", "lm_head.additional_fc.weight")):
        if extra in state:
            state[main] = torch.cat([state[main], state.pop(extra)])
    return state


def tensors_from_state(state: dict[str, Tensor], config: Mapping[str, Any],
                       source: str) -> dict[str, Tensor]:
    """HF Idefics weights -> mmcore keys: the decoupled tables merged, cross-attention
    layer m renamed to the LM layer it precedes (m x cross_layer_interval), gates
    flattened to () (float) or (D,) (vector)."""
    every = int(config.get("cross_layer_interval", 1))
    state = _merge_decoupled(dict(state))
    state = {_XATTN.sub(lambda m: f"model.gated_cross_attn_layers.{int(m[1]) * every}.", k): v
             for k, v in state.items()}
    out = HF_TO_MMCORE.apply(state, source=source)
    vector = config.get("alpha_type") == "vector"
    for key in [k for k in out if k.endswith(("attn_gate", "ff_gate"))]:
        out[key] = out[key].reshape(-1) if vector else out[key].reshape(())
    return out


class HFIdeficsConverter:
    """``hf-idefics``: IdeficsForVisionText2Text folders, in and out."""

    def detect(self, source: Path) -> bool:
        return (Path(source).is_dir() and hf.config_model_type(Path(source)) == "idefics"
                and hf.has_weights(Path(source)))

    def to_mmcore(self, source: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
        source = Path(source)
        if not source.is_dir():
            raise CheckpointError(f"{source} is not a folder (an HF Idefics checkpoint is a "
                                  "folder with config.json and model.safetensors)")
        config = hf.read_config(source)
        spec = spec_from_idefics_config(config, source)
        return spec, tensors_from_state(hf.read_weights(source), config, str(source))

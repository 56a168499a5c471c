"""``hf-llava``: a Hugging Face ``LlavaForConditionalGeneration`` folder -> mmcore, through
:mod:`mmcore.convert.hf` and the CLIP and LLaMA plugins' key maps. Nothing here imports
transformers.

Implemented (anything else is refused by name, never approximated): a CLIP vision tower
(``clip_vision_model``), one ``vision_feature_layer`` (an int), ``vision_feature_select_strategy``
``default`` or ``full``, the ``gelu`` two-layer projector with or without biases, and a
LLaMA / Mistral / Qwen2 LM as ``hf-llama`` reads it. Multi-layer feature lists,
LLaVA-NeXT's ``image_grid_pinpoints`` and other projector activations are refused. Both
weight layouts load: transformers 4's (``language_model.model.*``, ``vision_tower.vision_model.*``)
and 5's (``model.language_model.*``, ``model.vision_tower.*``, ``lm_head``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmcore.convert import hf
from mmcore.errors import CheckpointError
from mmcore_clip.hf_clip import HF_TO_MMCORE as CLIP_KEYS
from mmcore_clip.hf_config import clip_config
from mmcore_clip.sidecars import hf_image_preprocessor
from mmcore_llama.convert import spec_from_config
from mmcore_llama.keys import HF_TO_MMCORE as LLAMA_KEYS

TEXT, IMAGE, HEAD = "text", "image", "lm"
#: top-level config keys of variants mmcore does not implement
REFUSED = ("image_grid_pinpoints", "vision_feature_layers", "projector_layernorm")
VISION_PREFIXES = ("model.vision_tower.vision_model.", "model.vision_tower.",
                   "vision_tower.vision_model.", "vision_tower.")
LM_PREFIXES = ("model.language_model.", "language_model.model.")
HEAD_KEYS = ("lm_head.weight", "language_model.lm_head.weight")


def _key_map() -> hf.KeyMap:
    """HF LLaVA keys (both layouts) -> mmcore keys, from the CLIP and LLaMA rules."""
    rules: list[tuple[str, str]] = []
    for prefix in VISION_PREFIXES:
        rules += [(prefix + old[len("vision_model."):], new) for old, new in CLIP_KEYS.rules
                  if old.startswith("vision_model.")]
    for prefix in LM_PREFIXES:
        rules += [(prefix + old[len("model."):], new) for old, new in LLAMA_KEYS.rules
                  if old.startswith("model.")]
    rules += [(key, f"heads.{HEAD}.weight") for key in HEAD_KEYS]
    rules += [(p + "multi_modal_projector.*", "fusion.projector.*") for p in ("model.", "")]
    ignore = [p + "embeddings.position_ids" for p in VISION_PREFIXES]
    ignore += [p + "rotary_emb.inv_freq" for p in LM_PREFIXES]
    ignore += [p + "layers.{}.self_attn.rotary_emb.inv_freq" for p in LM_PREFIXES]
    return hf.KeyMap(rules, ignore=ignore)


HF_TO_MMCORE = _key_map()


def _refuse(key: str, value: Any, why: str) -> CheckpointError:
    return CheckpointError(f"config.json: {key} = {value!r} is not supported: {why}")


def check_config(config: Mapping[str, Any]) -> None:
    """CheckpointError naming the first LLaVA config field mmcore does not implement."""
    if config.get("model_type") != "llava":
        raise CheckpointError(f"config.json: model_type {config.get('model_type')!r} is not "
                              "'llava' (LLaVA-NeXT and other variants are not implemented)")
    for key in REFUSED:
        if config.get(key):
            raise _refuse(key, config[key], "LLaVA-1.5's single-resolution model is what "
                          "mmcore implements")
    layer = config.get("vision_feature_layer", -2)
    if not isinstance(layer, int) or isinstance(layer, bool):
        raise _refuse("vision_feature_layer", layer, "one layer (an int) is implemented, "
                      "not a list of layers")
    strategy = config.get("vision_feature_select_strategy", "default")
    if strategy not in ("default", "full"):
        raise _refuse("vision_feature_select_strategy", strategy, "default or full")
    act = config.get("projector_hidden_act", "gelu")
    if act != "gelu":
        raise _refuse("projector_hidden_act", act, "the mlp2x_gelu projector uses gelu")
    vision_type = (config.get("vision_config") or {}).get("model_type", "clip_vision_model")
    if vision_type != "clip_vision_model":
        raise _refuse("vision_config.model_type", vision_type, "the vision tower must be CLIP")
    if not config.get("text_config"):
        raise CheckpointError("config.json: text_config is missing (mmcore reads the LM's "
                              "sizes from it)")


def _image_modality(config: Mapping[str, Any], folder: Path) -> tuple[dict[str, Any], int]:
    """(the image modality's spec, image tokens per image)."""
    vc = clip_config({"model_type": "clip", "vision_config": config.get("vision_config")}).vision
    grid = vc["image_size"] // vc["patch_size"]
    select = config.get("vision_feature_select_strategy", "default")
    tokens = grid * grid + (select == "full")
    seq = config.get("image_seq_length")
    if seq is not None and seq != tokens:
        raise _refuse("image_seq_length", seq, f"the vision tower gives {tokens} tokens")
    heads = vc["num_attention_heads"]
    modality = {
        "preprocessor": hf_image_preprocessor(folder, vc["image_size"]),
        "tokenizer": {"type": "patch-embedding", "image_size": vc["image_size"],
                      "patch_size": vc["patch_size"], "width": vc["hidden_size"],
                      "channels": vc["num_channels"], "positions": "learned",
                      "cls_token": True},
        "encoder": {"type": "vit-features", "layers": vc["num_hidden_layers"], "heads": heads,
                    "act": hf.activation(vc["hidden_act"], "vision_config.hidden_act"),
                    "norm_eps": vc["layer_norm_eps"],
                    "mlp_ratio": vc["intermediate_size"] / vc["hidden_size"],
                    "pre_norm": True, "final_norm": True,
                    "feature_layer": config.get("vision_feature_layer", -2),
                    "select": select},
    }
    if int(vc["hidden_size"] * modality["encoder"]["mlp_ratio"]) != vc["intermediate_size"]:
        raise _refuse("vision_config.intermediate_size", vc["intermediate_size"],
                      "not representable as hidden_size x mlp_ratio")
    return modality, tokens


def spec_from_llava_config(config: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """The mmcore spec (a mapping for :func:`mmcore.load_spec`) of an HF LLaVA folder."""
    check_config(config)
    text_config = dict(config["text_config"])
    if config.get("tie_word_embeddings"):
        text_config["tie_word_embeddings"] = True
    lm = spec_from_config(text_config, folder)
    image, tokens = _image_modality(config, folder)
    image_id = config.get("image_token_index", config.get("image_token_id", 32000))
    if not 0 <= image_id < text_config["vocab_size"]:
        raise _refuse("image_token_index", image_id, "it must be an id of the LM's vocabulary")
    text = {"tokenizer": lm["modalities"][TEXT]["tokenizer"]}
    tokenizer = folder / "tokenizer.json"
    if tokenizer.is_file():
        context = text["tokenizer"]["context_length"]
        text = {"preprocessor": {"type": "llava-chat", "path": str(tokenizer.resolve()),
                                 "image_tokens": tokens, "context_length": context}, **text}
    fusion = {**lm["fusion"], "type": "llava", "image": IMAGE, "image_token_id": image_id,
              "projector": "mlp2x_gelu",
              "projector_bias": bool(config.get("multimodal_projector_bias", True))}
    return {"name": folder.resolve().name,
            "description": f"LlavaForConditionalGeneration imported from {folder.name}",
            "modalities": {IMAGE: image, TEXT: text}, "fusion": fusion,
            "heads": lm["heads"],
            "objectives": {"answer": {"type": "instruction-lm", "head": HEAD, "text": TEXT}}}


def tensors_from_folder(folder: Path, tied: bool) -> dict[str, Tensor]:
    """The folder's weights under mmcore's keys (a tied model's stored head must equal the
    embedding and is dropped)."""
    state = hf.read_weights(folder)
    heads = [k for k in HEAD_KEYS if k in state]
    if tied and heads:
        embed = next(v for k, v in state.items() if k.endswith("embed_tokens.weight"))
        if not torch.equal(state[heads[0]], embed):
            raise CheckpointError(f"{folder}: tie_word_embeddings is true but {heads[0]} "
                                  "differs from the token embedding")
        state = {k: v for k, v in state.items() if k not in heads}
    return HF_TO_MMCORE.apply(state, source=str(folder))


class HFLlavaConverter:
    """``hf-llava``: LLaVA-1.5-style folders, in and out."""

    def detect(self, source: Path) -> bool:
        return (Path(source).is_dir() and hf.config_model_type(Path(source)) == "llava"
                and hf.has_weights(Path(source)))

    def to_mmcore(self, source: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
        source = Path(source)
        if not source.is_dir():
            raise CheckpointError(f"{source} is not a folder (an HF LLaVA checkpoint is a "
                                  "folder with config.json and model.safetensors)")
        spec = spec_from_llava_config(hf.read_config(source), source)
        return spec, tensors_from_folder(source, spec["heads"][HEAD]["tied"])

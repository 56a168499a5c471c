"""``hf-blip``: Hugging Face ``BlipForImageTextRetrieval`` and ``BlipForConditionalGeneration``
folders -> mmcore, through :mod:`mmcore.convert.hf`. Nothing here imports transformers.

Implemented (anything else is refused by name, never approximated): the BLIP ViT
(pre-norm blocks, fused ``qkv``, final ``post_layernorm`` on every token), the BERT text
model with cross-attention, absolute positions, ``hidden_act`` from the shared activation
table. Retrieval folders become modes ``itc`` + ``itm`` (ITC projections and ``itm_head``);
captioning folders mode ``lm`` (the decoder, ``cls.predictions``). The ITC temperature is
``mmcore_itc_logit_scale`` where an mmcore export wrote one, else BLIP's initial 1 / 0.07.
As in transformers, the retrieval model's ITM reads the text ids as given (``enc_token_id``
unset) and the captioner's prompt is ``text_config.bos_token_id``; decoding stops at
``sep_token_id``. Export: :mod:`mmcore_blip.export`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmcore.convert import hf
from mmcore.errors import CheckpointError
from mmcore_clip.sidecars import hf_image_preprocessor

RETRIEVAL, CAPTIONING = "BlipForImageTextRetrieval", "BlipForConditionalGeneration"
#: config.json key an mmcore export writes the ITC temperature under (HF keeps none)
LOGIT_SCALE_KEY = "mmcore_itc_logit_scale"
#: transformers' BlipTextConfig / BlipVisionConfig defaults (configs may be saved as diffs)
TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 30524, "hidden_size": 768, "encoder_hidden_size": 768,
    "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 8,
    "max_position_embeddings": 512, "hidden_act": "gelu", "layer_norm_eps": 1e-12,
    "pad_token_id": 0, "bos_token_id": 30522, "sep_token_id": 102,
    "position_embedding_type": "absolute", "is_decoder": True}
VISION_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "image_size": 384, "patch_size": 16, "hidden_act": "gelu",
    "layer_norm_eps": 1e-5, "num_channels": 3}
#: config keys whose only implemented value is the one given
FIXED = {"text_config.position_embedding_type": "absolute", "text_config.is_decoder": True,
         "vision_config.num_channels": 3}

_TEXT_LAYER = {
    "crossattention.self.query.": "cross_attention.attn.q_proj.",
    "crossattention.self.key.": "cross_attention.attn.k_proj.",
    "crossattention.self.value.": "cross_attention.attn.v_proj.",
    "crossattention.output.dense.": "cross_attention.attn.out_proj.",
    "crossattention.output.LayerNorm.": "cross_attention.norm.",
    "attention.self.query.": "{sa}.attn.q_proj.", "attention.self.key.": "{sa}.attn.k_proj.",
    "attention.self.value.": "{sa}.attn.v_proj.",
    "attention.output.dense.": "{sa}.attn.out_proj.", "attention.output.LayerNorm.": "{sa}.norm.",
    "intermediate.dense.": "feed_forward.inner.", "output.dense.": "feed_forward.out.",
    "output.LayerNorm.": "feed_forward.norm.",
}
_VISION = [
    ("vision_model.embeddings.patch_embedding.*", "tokenizers.image.proj.*"),
    ("vision_model.embeddings.class_embedding", "tokenizers.image.cls"),
    ("vision_model.embeddings.position_embedding", "tokenizers.image.positions.weight"),
    ("vision_model.encoder.layers.{}.self_attn.qkv.*", "encoders.image.stack.blocks.{}.qkv.*"),
    ("vision_model.encoder.layers.{}.self_attn.projection.*",
     "encoders.image.stack.blocks.{}.attn.out_proj.*"),
    ("vision_model.encoder.layers.{}.layer_norm1.*", "encoders.image.stack.blocks.{}.norm1.*"),
    ("vision_model.encoder.layers.{}.layer_norm2.*", "encoders.image.stack.blocks.{}.norm2.*"),
    ("vision_model.encoder.layers.{}.mlp.*", "encoders.image.stack.blocks.{}.mlp.*"),
    ("vision_model.post_layernorm.*", "encoders.image.stack.final_norm.*"),
]


def _text_rules(prefix: str, self_attention: str) -> list[tuple[str, str]]:
    rules = [(f"{prefix}embeddings.word_embeddings.weight", "tokenizers.text.word.weight"),
             (f"{prefix}embeddings.position_embeddings.weight",
              "tokenizers.text.positions.weight"),
             (f"{prefix}embeddings.LayerNorm.*", "tokenizers.text.norm.*")]
    return rules + [(f"{prefix}encoder.layer.{{}}.{old}*",
                     f"fusion.layers.{{}}.{new.format(sa=self_attention)}*")
                    for old, new in _TEXT_LAYER.items()]


RETRIEVAL_KEYS = hf.KeyMap(
    _VISION + _text_rules("text_encoder.", "attention")
    + [("vision_proj.*", "fusion.vision_proj.*"), ("text_proj.*", "fusion.text_proj.*"),
       ("itm_head.*", "objectives.itm.head.*")],
    ignore=["*position_ids"])
CAPTIONING_KEYS = hf.KeyMap(
    _VISION + _text_rules("text_decoder.bert.", "decoder_attention")
    + [("text_decoder.cls.predictions.transform.dense.*", "objectives.lm.head.dense.*"),
       ("text_decoder.cls.predictions.transform.LayerNorm.*", "objectives.lm.head.norm.*"),
       ("text_decoder.cls.predictions.decoder.weight", "objectives.lm.head.decoder.weight"),
       ("text_decoder.cls.predictions.bias", "objectives.lm.head.decoder.bias")],
    ignore=["*position_ids", "text_decoder.cls.predictions.decoder.bias"])


def _refuse(key: str, value: Any, why: str) -> CheckpointError:
    return CheckpointError(f"config.json: {key} = {value!r} is not supported: {why}")


def check_config(config: Mapping[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(architecture, text config, vision config), defaults filled in; CheckpointError
    naming the first option mmcore does not implement."""
    if config.get("model_type") != "blip":
        raise _refuse("model_type", config.get("model_type"), "hf-blip reads BLIP folders")
    archs = config.get("architectures") or []
    if len(archs) != 1 or archs[0] not in (RETRIEVAL, CAPTIONING):
        raise _refuse("architectures", archs, f"{RETRIEVAL} and {CAPTIONING} are implemented")
    text = hf.with_defaults(config.get("text_config"), TEXT_DEFAULTS)
    vision = hf.with_defaults(config.get("vision_config"), VISION_DEFAULTS)
    for key, wanted in FIXED.items():
        part, name = key.split(".")
        value = (text if part == "text_config" else vision).get(name)
        if value != wanted:
            raise _refuse(key, value, f"mmcore implements {wanted!r} only")
    if text["encoder_hidden_size"] != vision["hidden_size"]:
        raise _refuse("text_config.encoder_hidden_size", text["encoder_hidden_size"],
                      f"it must equal vision_config.hidden_size {vision['hidden_size']}")
    hf.activation(text["hidden_act"], "text_config.hidden_act")
    hf.activation(vision["hidden_act"], "vision_config.hidden_act")
    return archs[0], text, vision


def _image_modality(vision: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    ratio = vision["intermediate_size"] / vision["hidden_size"]
    if int(vision["hidden_size"] * ratio) != vision["intermediate_size"]:
        raise _refuse("vision_config.intermediate_size", vision["intermediate_size"],
                      "not representable as hidden_size x mlp_ratio")
    return {
        "preprocessor": hf_image_preprocessor(folder, vision["image_size"]),
        "tokenizer": {"type": "patch-embedding", "image_size": vision["image_size"],
                      "patch_size": vision["patch_size"], "width": vision["hidden_size"],
                      "bias": True},
        "encoder": {"type": "vit", "layers": vision["num_hidden_layers"],
                    "heads": vision["num_attention_heads"], "mlp_ratio": ratio,
                    "act": hf.activation(vision["hidden_act"], "vision_config.hidden_act"),
                    "norm_eps": vision["layer_norm_eps"], "pre_norm": False,
                    "final_norm": True},
    }


def _text_modality(text: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    modality: dict[str, Any] = {"tokenizer": {
        "type": "blip-text-embedding", "vocab_size": text["vocab_size"],
        "width": text["hidden_size"], "max_length": text["max_position_embeddings"],
        "norm_eps": text["layer_norm_eps"]}}
    if (folder / "tokenizer.json").is_file():
        modality = {"preprocessor": {"type": "hf-tokenizer",
                                     "path": str((folder / "tokenizer.json").resolve()),
                                     "context_length": text["max_position_embeddings"]},
                    **modality}
    return modality


def spec_from_blip_config(config: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """The mmcore spec (a mapping for :func:`mmcore.load_spec`) of an HF BLIP folder."""
    arch, text, vision = check_config(config)
    act = hf.activation(text["hidden_act"], "text_config.hidden_act")
    fusion: dict[str, Any] = {
        "type": "blip", "layers": text["num_hidden_layers"],
        "heads": text["num_attention_heads"], "hidden": text["intermediate_size"], "act": act,
        "norm_eps": text["layer_norm_eps"]}
    if arch == RETRIEVAL:
        fusion.update(modes=["itc", "itm"],
                      embed_dim=config.get("image_text_hidden_size", 256))
        objectives: dict[str, Any] = {
            "itc": {"type": "contrastive", "pairs": [["image", "text"]]},
            "itm": {"type": "blip-matching"}}
    else:
        fusion.update(modes=["lm"], dec_token_id=text["bos_token_id"])
        objectives = {"lm": {"type": "blip-lm", "vocab_size": text["vocab_size"], "act": act,
                             "norm_eps": text["layer_norm_eps"],
                             "eos_id": text["sep_token_id"], "pad_id": text["pad_token_id"]}}
    ids = {k: text[k] for k in ("bos_token_id", "sep_token_id", "pad_token_id")}
    return {"name": folder.resolve().name, "description": f"{arch} imported from {folder.name}",
            "modalities": {"image": _image_modality(vision, folder),
                           "text": _text_modality(text, folder)},
            "fusion": fusion, "objectives": objectives,
            "metadata": {"hf_blip": {"text_config": ids}}}


def _split_qkv(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The ViT's fused ``qkv`` (3D, D) -> q/k/v projections (D, D) each."""
    out = {}
    for key, value in state.items():
        head, sep, tail = key.rpartition(".qkv.")
        if not sep:
            out[key] = value
            continue
        for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0),
                              strict=True):
            out[f"{head}.attn.{name}.{tail}"] = part.contiguous()
    return out


def tensors_from_folder(folder: Path, arch: str,
                        config: Mapping[str, Any] | None = None) -> dict[str, Tensor]:
    """The folder's weights under mmcore's keys (``config``: its config.json, for the ITC
    temperature an mmcore export writes)."""
    config = config or {}
    state = hf.read_weights(folder)
    if arch == CAPTIONING:
        decoder = "text_decoder.cls.predictions.decoder.weight"
        if decoder not in state:  # tied to the word embeddings, so saved once
            state = {**state, decoder: state["text_decoder.bert.embeddings.word_embeddings.weight"]}
    keys = RETRIEVAL_KEYS if arch == RETRIEVAL else CAPTIONING_KEYS
    out = _split_qkv(keys.apply(state, source=str(folder)))
    if arch == RETRIEVAL:  # HF keeps no ITC temperature: an mmcore export's, else 1 / 0.07
        scale = float(config.get(LOGIT_SCALE_KEY, math.log(1 / 0.07)))
        out["objectives.itc.logit_scale"] = torch.tensor(scale)
    out["tokenizers.image.cls"] = out["tokenizers.image.cls"].reshape(-1)
    positions = out["tokenizers.image.positions.weight"]
    out["tokenizers.image.positions.weight"] = positions.reshape(-1, positions.shape[-1])
    return out


class HFBlipConverter:
    """``hf-blip``: BLIP retrieval and captioning folders, in and out."""

    def detect(self, source: Path) -> bool:
        return (Path(source).is_dir() and hf.config_model_type(Path(source)) == "blip"
                and hf.has_weights(Path(source)))

    def to_mmcore(self, source: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
        source = Path(source)
        if not source.is_dir():
            raise CheckpointError(f"{source} is not a folder (an HF BLIP checkpoint is a "
                                  "folder with config.json and model.safetensors)")
        config = hf.read_config(source)
        spec = spec_from_blip_config(config, source)
        with torch.no_grad():
            return spec, tensors_from_folder(source, check_config(config)[0], config)

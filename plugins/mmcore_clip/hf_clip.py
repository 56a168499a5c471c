"""Hugging Face ``transformers.CLIPModel`` <-> mmcore: the spec and the weight mapping.

Nothing here imports ``transformers``: configs are plain mappings (or any object with
``to_dict()``) and state dicts are plain mappings of tensors. Architectural correspondences:

* HF ``pre_layrnorm`` is the ViT's ``pre_norm``; HF ``post_layernorm`` (applied to the CLS
  token only) is the ViT's ``final_norm`` (applied to every token, then CLS pooling: the
  same pooled vector).
* HF ``final_layer_norm`` is the text transformer's ``final_norm``.
* HF pools text at ``argmax(input_ids)`` (legacy ``eos_token_id == 2``) or at the first
  ``eos_token_id``; mmcore's ``eot`` pooling takes the last token the mask marks as real.
  They agree when the EOT token ends each sequence's valid part, as CLIP tokenizers do
  (the ``hf-tokenizer`` preprocessor's mask ends at the EOT its post-processor appends).
* mmcore clamps ``exp(logit_scale)`` at ``max_logit_scale`` (100, as OpenAI's training
  does); HF does not clamp.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import Tensor

from mmcore.convert.hf import ACTIVATIONS, HF_ACTIVATIONS, KeyMap, activation
from mmcore_clip.hf_config import ClipConfig, as_mapping, clip_config

if TYPE_CHECKING:
    from mmcore.model import MultimodalModel

#: HF activation name -> mmcore activation name (the shared table)
ACTS = ACTIVATIONS
#: mmcore activation name -> HF activation name (for export)
HF_ACTS = HF_ACTIVATIONS

#: whole-key renames
_FIXED = {
    "logit_scale": "objectives.contrastive.logit_scale",
    "visual_projection.weight": "fusion.projections.image.weight",
    "text_projection.weight": "fusion.projections.text.weight",
    "vision_model.embeddings.class_embedding": "tokenizers.image.cls",
    "vision_model.embeddings.patch_embedding.weight": "tokenizers.image.proj.weight",
    "vision_model.embeddings.position_embedding.weight": "tokenizers.image.positions.weight",
    "text_model.embeddings.token_embedding.weight": "tokenizers.text.embed.weight",
    "text_model.embeddings.position_embedding.weight": "tokenizers.text.positions.weight",
}
#: prefix renames (followed by ``weight`` / ``bias``)
_PREFIXES = {
    "vision_model.pre_layrnorm.": "encoders.image.stack.pre_norm.",
    "vision_model.post_layernorm.": "encoders.image.stack.final_norm.",
    "text_model.final_layer_norm.": "encoders.text.stack.final_norm.",
}
_LAYER_PARTS = {"self_attn.": "attn.", "layer_norm1.": "norm1.", "layer_norm2.": "norm2.",
                "mlp.": "mlp."}
_TOWERS = {"vision": "image", "text": "text"}

#: HF ``CLIPModel`` keys -> mmcore keys; non-persistent ``position_ids`` buffers (which
#: older checkpoints still carry) are dropped
HF_TO_MMCORE = KeyMap(
    [*_FIXED.items(), *((old + "*", new + "*") for old, new in _PREFIXES.items()),
     *((f"{tower}_model.encoder.layers.{{}}.{old}*",
        f"encoders.{modality}.stack.blocks.{{}}.{new}*")
       for tower, modality in _TOWERS.items() for old, new in _LAYER_PARTS.items())],
    ignore=["position_ids", "*.position_ids"])
MMCORE_TO_HF = HF_TO_MMCORE.inverse(target="HF CLIP")


def _mlp_ratio(hidden: int, intermediate: int) -> float:
    """intermediate / hidden, checked to round-trip through ``int(hidden * ratio)``."""
    ratio = intermediate / hidden
    if int(hidden * ratio) != intermediate:
        raise ValueError(f"intermediate size {intermediate} is not representable as "
                         f"hidden {hidden} x mlp_ratio")
    return ratio


def _image_modality(vc: Mapping[str, Any], preprocessor: dict[str, Any] | None
                    ) -> dict[str, Any]:
    return {
        "preprocessor": preprocessor or {"type": "image", "size": vc["image_size"]},
        "tokenizer": {"type": "patch-embedding", "image_size": vc["image_size"],
                      "patch_size": vc["patch_size"], "width": vc["hidden_size"],
                      "channels": vc["num_channels"], "positions": "learned",
                      "cls_token": True},
        "encoder": {"type": "vit", "layers": vc["num_hidden_layers"],
                    "heads": vc["num_attention_heads"],
                    "act": activation(vc["hidden_act"], "vision_config.hidden_act"),
                    "norm_eps": vc["layer_norm_eps"],
                    "mlp_ratio": _mlp_ratio(vc["hidden_size"], vc["intermediate_size"]),
                    "pre_norm": True, "final_norm": True},
    }


def _text_modality(tc: Mapping[str, Any], preprocessor: dict[str, Any] | None
                   ) -> dict[str, Any]:
    return {
        "preprocessor": preprocessor,
        "tokenizer": {"type": "token-embedding", "vocab_size": tc["vocab_size"],
                      "width": tc["hidden_size"],
                      "context_length": tc["max_position_embeddings"]},
        "encoder": {"type": "text-transformer", "layers": tc["num_hidden_layers"],
                    "heads": tc["num_attention_heads"],
                    "act": activation(tc["hidden_act"], "text_config.hidden_act"),
                    "norm_eps": tc["layer_norm_eps"],
                    "mlp_ratio": _mlp_ratio(tc["hidden_size"], tc["intermediate_size"]),
                    "causal": True, "final_norm": True},
    }


def hf_tokenizer_preprocessor(tokenizer_json: str, context_length: int, *,
                              pad_token: str = "<|endoftext|>",
                              eos_token: str = "<|endoftext|>") -> dict[str, Any]:
    """The ``hf-tokenizer`` preprocessor params for a CLIP ``tokenizer.json``: padded and
    truncated to ``context_length`` with the EOT kept last, so the mask ends at the EOT."""
    return {"type": "hf-tokenizer", "path": tokenizer_json, "context_length": context_length,
            "pad_token": pad_token, "eos_token": eos_token}


def spec_from_clip_config(cfg: ClipConfig, *, name: str = "hf-clip",
                          text_preprocessor: dict[str, Any] | None = None,
                          image_preprocessor: dict[str, Any] | None = None,
                          metadata: dict[str, Any] | None = None,
                          source: str = "CLIP") -> dict[str, Any]:
    """An mmcore spec (a dict for :func:`mmcore.load_spec`) for a CLIP architecture;
    ``source`` starts its description."""
    vc, tc = cfg.vision, cfg.text
    return {
        "name": name,
        "description": f"{source} ({vc['hidden_size']}x{vc['num_hidden_layers']} vision, "
                       f"{tc['hidden_size']}x{tc['num_hidden_layers']} text)",
        "modalities": {"image": _image_modality(vc, image_preprocessor),
                       "text": _text_modality(tc, text_preprocessor)},
        "fusion": {"type": "late", "embed_dim": cfg.projection_dim,
                   "pooling": {"image": "cls", "text": "eot"}, "projection_bias": False},
        "objectives": {"contrastive": {
            "type": "contrastive", "pairs": [["image", "text"]],
            "init_temperature": math.exp(-cfg.logit_scale_init_value)}},
        "metadata": dict(metadata or {}),
    }


def spec_from_hf_clip_config(config: Any, *, name: str = "hf-clip",
                             tokenizer_json: str | None = None) -> dict[str, Any]:
    """An mmcore spec for an HF ``CLIPConfig`` (object or ``config.json`` mapping).

    The text preprocessor is ``hf-tokenizer`` when ``tokenizer_json`` (the checkpoint's
    ``tokenizer.json``) is given, else none: mmcore's ``byte-text`` ids would not match
    the HF vocabulary the weights were trained with.
    """
    cfg = clip_config(as_mapping(config))
    text = None
    if tokenizer_json is not None:
        text = hf_tokenizer_preprocessor(tokenizer_json, cfg.text["max_position_embeddings"])
    return spec_from_clip_config(cfg, name=name, text_preprocessor=text,
                                 source="converted from transformers CLIPModel")


def mmcore_key(hf_key: str) -> str | None:
    """The mmcore state-dict key for one HF key; None for keys to drop (position_ids).
    Raises KeyError (a KeyMappingError) for a key with no equivalent."""
    return HF_TO_MMCORE.target(hf_key)


def hf_key(mm_key: str) -> str:
    """The HF ``CLIPModel`` key for one mmcore key (the inverse of :func:`mmcore_key`)."""
    key = MMCORE_TO_HF.target(mm_key)
    assert key is not None  # the inverse map ignores nothing
    return key


def hf_clip_to_mmcore(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename an HF ``CLIPModel`` state dict to the keys of the mmcore model built from
    :func:`spec_from_hf_clip_config`. Tensors are shared, not copied. Raises KeyError (a
    KeyMappingError) naming every key it does not know (e.g. a classification head)."""
    return HF_TO_MMCORE.apply(state_dict, source="HF CLIP state dict")


def mmcore_to_hf_clip(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename an mmcore CLIP state dict to HF ``CLIPModel`` keys. KeyError (a
    KeyMappingError) lists the keys that have no HF equivalent (e.g. an extra head)."""
    return MMCORE_TO_HF.apply(state_dict, source="mmcore CLIP state dict")


def from_hf_clip(hf_model: Any, *, device: str = "cpu",
                 tokenizer_json: str | None = None) -> MultimodalModel:
    """Build the mmcore equivalent of an HF ``CLIPModel`` and load its weights (strict)."""
    import mmcore

    spec = spec_from_hf_clip_config(hf_model.config, tokenizer_json=tokenizer_json)
    model = mmcore.build(spec, device=device)
    model.load_state_dict(hf_clip_to_mmcore(hf_model.state_dict()), strict=True)
    return model

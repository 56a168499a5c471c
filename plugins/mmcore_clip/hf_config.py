"""A Hugging Face CLIP ``config.json`` read as plain JSON, with transformers' defaults.

``config.json`` files list only what differs from ``CLIPConfig`` / ``CLIPTextConfig`` /
``CLIPVisionConfig`` defaults (older ones also carry ``text_config_dict`` /
``vision_config_dict``, which override ``text_config`` / ``vision_config``, as
transformers does). :func:`clip_config` fills in the rest, so nothing here needs
``transformers``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mmcore.errors import CheckpointError

#: transformers' CLIPTextConfig defaults (openai/clip-vit-base-patch32)
TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048,
    "num_hidden_layers": 12, "num_attention_heads": 8, "max_position_embeddings": 77,
    "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
    "pad_token_id": 1, "bos_token_id": 49406, "eos_token_id": 49407,
}
#: transformers' CLIPVisionConfig defaults
VISION_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "num_channels": 3, "image_size": 224, "patch_size": 32,
    "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
}
#: transformers' CLIPConfig defaults
TOP_DEFAULTS: dict[str, Any] = {"projection_dim": 512, "logit_scale_init_value": 2.6592}
#: keys that must be positive integers, per tower
_INTS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
#: HF's legacy text ``eos_token_id``: pool at ``argmax(input_ids)`` instead
LEGACY_EOS_ID = 2


@dataclass(frozen=True)
class ClipConfig:
    """A CLIP architecture with every default filled in (HF key names)."""

    vision: dict[str, Any]
    text: dict[str, Any]
    projection_dim: int
    logit_scale_init_value: float

    def to_hf(self) -> dict[str, Any]:
        """The ``config.json`` mapping that transformers' ``CLIPModel`` reads."""
        return {
            "architectures": ["CLIPModel"], "model_type": "clip",
            "projection_dim": self.projection_dim,
            "logit_scale_init_value": self.logit_scale_init_value,
            "text_config": {"model_type": "clip_text_model", **self.text,
                            "projection_dim": self.projection_dim},
            "vision_config": {"model_type": "clip_vision_model", **self.vision,
                              "projection_dim": self.projection_dim},
            "torch_dtype": "float32",
        }


def _merged(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    """``data[key]`` updated by the legacy ``data[key + "_dict"]``; each must be an object."""
    out: dict[str, Any] = {}
    for name in (key, f"{key}_dict"):
        value = data.get(name)
        if value is not None and not isinstance(value, Mapping):
            raise CheckpointError(f"config.json {name} must be an object of settings, got "
                                  f"{type(value).__name__} {value!r:.60}")
        out.update(value or {})
    return out


def _with_defaults(given: Mapping[str, Any], defaults: Mapping[str, Any],
                   where: str) -> dict[str, Any]:
    """The defaults overridden by ``given`` (None means the default, as HF reads it)."""
    out = {k: (given[k] if given.get(k) is not None else v) for k, v in defaults.items()}
    for key in _INTS:
        value = out[key]
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise CheckpointError(f"config.json {where}.{key} must be a positive integer, "
                                  f"got {value!r}")
    if out["hidden_size"] % out["num_attention_heads"]:
        raise CheckpointError(f"config.json {where}.hidden_size {out['hidden_size']} is not a "
                              f"multiple of num_attention_heads {out['num_attention_heads']}")
    return out


def _square(value: Any, key: str) -> int:
    """An image/patch size: an int, or a square [h, w] pair."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise CheckpointError(f"config.json vision_config.{key} {value} is not square; "
                                  "mmcore's CLIP import supports square images and patches")
        value = value[0]
    if not isinstance(value, int) or value <= 0:
        raise CheckpointError(f"config.json vision_config.{key} must be a positive integer, "
                              f"got {value!r}")
    return value


def clip_config(data: Mapping[str, Any]) -> ClipConfig:
    """A ``config.json`` mapping (or ``CLIPConfig.to_dict()``) -> :class:`ClipConfig`."""
    model_type = data.get("model_type", "clip")
    if model_type != "clip":
        raise CheckpointError(f"config.json model_type is {model_type!r}, not 'clip'")
    vision = _with_defaults(_merged(data, "vision_config"), VISION_DEFAULTS, "vision_config")
    text = _with_defaults(_merged(data, "text_config"), TEXT_DEFAULTS, "text_config")
    for key in ("image_size", "patch_size"):
        vision[key] = _square(vision[key], key)
    if vision["image_size"] % vision["patch_size"]:
        raise CheckpointError(f"config.json vision_config.image_size {vision['image_size']} "
                              f"is not a multiple of patch_size {vision['patch_size']}")
    top: dict[str, Any] = {k: (data[k] if data.get(k) is not None else v)
                           for k, v in TOP_DEFAULTS.items()}
    if not isinstance(top["projection_dim"], int) or isinstance(top["projection_dim"], bool) \
            or top["projection_dim"] <= 0:
        raise CheckpointError(f"config.json projection_dim must be a positive integer, got "
                              f"{top['projection_dim']!r}")
    scale = top["logit_scale_init_value"]
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale):
        raise CheckpointError(f"config.json logit_scale_init_value must be a finite number, "
                              f"got {scale!r}")
    return ClipConfig(vision=vision, text=text, projection_dim=int(top["projection_dim"]),
                      logit_scale_init_value=float(top["logit_scale_init_value"]))


def as_mapping(config: Any) -> Mapping[str, Any]:
    """A config mapping from a mapping or a transformers config object (``to_dict()``)."""
    if isinstance(config, Mapping):
        return config
    to_dict = getattr(config, "to_dict", None)
    if callable(to_dict):
        return dict(to_dict())
    raise TypeError(f"expected a config mapping or a CLIPConfig, got {type(config).__name__}")

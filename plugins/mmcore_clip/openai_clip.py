"""The ``openai-clip`` converter: OpenAI CLIP / open_clip state dicts -> mmcore.

Reads a ``.safetensors`` file, or a ``.pt`` / ``.pth`` only through
``torch.load(weights_only=True)`` (no fallback to unsafe loading), or a folder holding
``open_clip_model.safetensors`` / ``open_clip_pytorch_model.bin`` (as open_clip's Hub
repositories do). The architecture is inferred from tensor shapes as OpenAI's
``build_model`` does; ViT models only.

Attention heads and the activation cannot be read from shapes. With an
``open_clip_config.json`` beside the weights they come from its ``model_cfg`` (vision heads
= width // head_width, text heads; ``quick_gelu`` or GELU, as open_clip builds them);
without one, OpenAI's convention applies: width // 64 heads and QuickGELU.

Tokenizer: OpenAI's BPE needs its vocabulary, which a state dict does not carry. A
``tokenizer.json`` beside the weights (e.g. from the matching Hugging Face repository)
becomes the ``hf-tokenizer`` text preprocessor; without one the spec uses ``byte-text``,
whose ids do NOT match the pretrained vocabulary (fine for fine-tuning from scratch text,
meaningless for zero-shot), and a warning says so.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from mmcore.convert.hf import load_weights_file, safetensors_keys
from mmcore.errors import CheckpointError
from mmcore_clip.checks import check_weights
from mmcore_clip.hf_clip import spec_from_clip_config
from mmcore_clip.hf_config import ClipConfig
from mmcore_clip.hf_converter import hf_to_mmcore_tensors
from mmcore_clip.sidecars import (
    TOKENIZER_JSON,
    image_preprocessor,
    read_mapping,
    text_preprocessor,
)

#: weight files of open_clip's Hugging Face Hub repositories, in order of preference
OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
OPEN_CLIP_CONFIG = "open_clip_config.json"
FILE_SUFFIXES = (".safetensors", ".pt", ".pth")
#: OpenAI's convention when no config names the heads
HEAD_WIDTH = 64
#: byte-text's vocabulary (mmcore_text): smaller embeddings cannot take its ids
BYTE_VOCAB = 259

_FIXED = {
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "logit_scale": "logit_scale",
}
_PREFIXES = {"visual.ln_pre.": "vision_model.pre_layrnorm.",
             "visual.ln_post.": "vision_model.post_layernorm.",
             "ln_final.": "text_model.final_layer_norm."}
#: (in, out) matrices that HF stores as Linear weights (out, in)
_TRANSPOSED = {"visual.proj": "visual_projection.weight",
               "text_projection": "text_projection.weight"}
_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
_BLOCK_PARTS = {"ln_1.": "layer_norm1.", "ln_2.": "layer_norm2.", "mlp.c_fc.": "mlp.fc1.",
                "mlp.c_proj.": "mlp.fc2.", "attn.out_proj.": "self_attn.out_proj."}
#: OpenAI's scripted-model extras and open_clip's causal-mask buffer: not weights
_IGNORED = {"input_resolution", "context_length", "vocab_size", "attn_mask"}
_REQUIRED = ("visual.conv1.weight", "visual.positional_embedding", "visual.proj",
             "token_embedding.weight", "positional_embedding", "ln_final.weight",
             "text_projection", "visual.transformer.resblocks.0.mlp.c_fc.weight",
             "transformer.resblocks.0.mlp.c_fc.weight")


# --- locating and reading ----------------------------------------------------------------


def weights_file(source: Path) -> Path:
    """The weights to read: ``source`` itself, or open_clip's file inside a folder."""
    if source.is_dir():
        for name in OPEN_CLIP_FILES:
            if (source / name).is_file():
                return source / name
        raise CheckpointError(f"{source} has no open_clip weights ({', '.join(OPEN_CLIP_FILES)})"
                              "; give the .safetensors / .pt file itself")
    return source


def _strip_text_prefix(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """open_clip's CustomTextCLIP keeps the text tower under ``text.``; CLIP at the top."""
    if "token_embedding.weight" in state or "text.token_embedding.weight" not in state:
        return state
    return {k.removeprefix("text."): v for k, v in state.items()}


def read_state(source: Path) -> dict[str, Tensor]:
    """The OpenAI-layout state dict at ``source``; ResNet towers and non-CLIP files refused."""
    state = _strip_text_prefix(load_weights_file(weights_file(source)))
    if any(k.startswith(("visual.layer1.", "visual.attnpool.")) for k in state):
        raise CheckpointError(f"{source}: ResNet visual backbones (RN50, RN101, ...) are not "
                              "supported; openai-clip imports ViT models only")
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"{source} is not an OpenAI/open_clip CLIP ViT state dict: it "
                              f"lacks {', '.join(missing)}")
    return state


# --- architecture ------------------------------------------------------------------------


def _layers(state: Mapping[str, Tensor], prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}transformer\.resblocks\.(\d+)\.")
    return len({m.group(1) for k in state if (m := pattern.match(k))})


def _heads(width: int, configured: int | None, where: str) -> int:
    heads = configured if configured is not None else width // HEAD_WIDTH
    if heads <= 0 or width % heads:
        hint = f"{where}" if configured is not None else \
            f"OpenAI's width // {HEAD_WIDTH} (add an {OPEN_CLIP_CONFIG} naming the heads)"
        raise CheckpointError(f"width {width} does not split into {heads} heads from {hint}")
    return heads


def _vision(state: Mapping[str, Tensor], cfg: Mapping[str, Any], act: str) -> dict[str, Any]:
    conv = state["visual.conv1.weight"]  # (width, channels, patch, patch)
    width, patch = conv.shape[0], conv.shape[-1]
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    configured = cfg["width"] // cfg.get("head_width", HEAD_WIDTH) if "width" in cfg else None
    return {"hidden_size": width, "num_channels": conv.shape[1], "patch_size": patch,
            "image_size": patch * grid, "num_hidden_layers": _layers(state, "visual."),
            "intermediate_size": state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            "num_attention_heads": _heads(width, configured, "vision_cfg.head_width"),
            "hidden_act": act, "layer_norm_eps": 1e-5}


def _text(state: Mapping[str, Tensor], cfg: Mapping[str, Any], act: str) -> dict[str, Any]:
    vocab, width = state["token_embedding.weight"].shape
    return {"vocab_size": vocab, "hidden_size": width,
            "max_position_embeddings": state["positional_embedding"].shape[0],
            "num_hidden_layers": _layers(state, ""),
            "intermediate_size": state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            "num_attention_heads": _heads(width, cfg.get("heads"), "text_cfg.heads"),
            "hidden_act": act, "layer_norm_eps": 1e-5,
            # OpenAI's vocabulary ends with <|startoftext|>, <|endoftext|>; pads are 0
            "bos_token_id": vocab - 2, "eos_token_id": vocab - 1, "pad_token_id": 0}


def _declared(model_cfg: Mapping[str, Any], cfg: ClipConfig) -> list[tuple[str, Any, Any]]:
    """(model_cfg key, declared value, value the weights give) where they differ."""
    vision, text = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    rows = [("embed_dim", model_cfg.get("embed_dim"), cfg.projection_dim)]
    rows += [(f"vision_cfg.{k}", vision.get(k), cfg.vision[hf]) for k, hf in (
        ("width", "hidden_size"), ("layers", "num_hidden_layers"),
        ("patch_size", "patch_size"), ("image_size", "image_size"))]
    rows += [(f"text_cfg.{k}", text.get(k), cfg.text[hf]) for k, hf in (
        ("width", "hidden_size"), ("layers", "num_hidden_layers"),
        ("context_length", "max_position_embeddings"), ("vocab_size", "vocab_size"))]
    return [(key, declared, found) for key, declared, found in rows
            if declared is not None and declared != found]


def infer_config(state: Mapping[str, Tensor], model_cfg: Mapping[str, Any] | None = None,
                 source: str = "weights") -> ClipConfig:
    """The CLIP architecture of an OpenAI-layout state dict (open_clip's ``model_cfg``
    supplies heads and activation, and must agree with the shapes)."""
    model_cfg = model_cfg or {}
    # open_clip builds nn.GELU unless its config says quick_gelu; OpenAI used QuickGELU
    act = "quick_gelu" if (model_cfg.get("quick_gelu") if model_cfg else True) else "gelu"
    cfg = ClipConfig(vision=_vision(state, model_cfg.get("vision_cfg", {}), act),
                     text=_text(state, model_cfg.get("text_cfg", {}), act),
                     projection_dim=state["text_projection"].shape[1],
                     logit_scale_init_value=float(state["logit_scale"])
                     if "logit_scale" in state else math.log(1 / 0.07))
    wrong = _declared(model_cfg, cfg)
    if wrong:
        raise CheckpointError(f"{source}: {OPEN_CLIP_CONFIG} disagrees with the weights: " +
                              "; ".join(f"model_cfg.{k} = {d} but the weights give {f}"
                                        for k, d, f in wrong))
    return cfg


# --- key mapping -------------------------------------------------------------------------


def _block_keys(key: str, value: Tensor) -> dict[str, Tensor] | None:
    match = _BLOCK.match(key)
    if match is None:
        return None
    tower = "vision_model" if match.group(1) else "text_model"
    base, rest = f"{tower}.encoder.layers.{match.group(2)}.", match.group(3)
    if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
        kind = rest.rsplit("_", 1)[1]  # weight | bias
        q, k, v = value.chunk(3, dim=0)  # (3D, ...) -> 3 x (D, ...)
        return {f"{base}self_attn.{n}_proj.{kind}": t for n, t in zip("qkv", (q, k, v),
                                                                       strict=True)}
    for old, new in _BLOCK_PARTS.items():
        if rest.startswith(old):
            return {base + new + rest[len(old):]: value}
    return None


def _hf_keys(key: str, value: Tensor) -> dict[str, Tensor] | None:
    """One OpenAI tensor -> its HF-named tensor(s); None if it has no equivalent."""
    if key in _FIXED:
        return {_FIXED[key]: value}
    if key in _TRANSPOSED:
        return {_TRANSPOSED[key]: value.t()}  # (in, out) -> (out, in)
    for old, new in _PREFIXES.items():
        if key.startswith(old):
            return {new + key[len(old):]: value}
    return _block_keys(key, value)


def openai_to_hf(state: Mapping[str, Tensor], source: str = "weights") -> dict[str, Tensor]:
    """Rename an OpenAI/open_clip CLIP state dict to HF ``CLIPModel`` keys: in_proj split
    into q/k/v, c_fc/c_proj -> fc1/fc2, ln_1/ln_2 -> layer_norm1/2, projections transposed."""
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in state.items():
        if key.rsplit(".", 1)[-1] in _IGNORED:
            continue
        mapped = _hf_keys(key, value)
        if mapped is None:
            unknown.append(key)
        else:
            out.update(mapped)
    if unknown:
        raise CheckpointError(
            f"{source} has tensors mmcore's CLIP cannot hold: {', '.join(unknown[:8])} (open_clip"
            " variants with attention pooling, layer scale, biased projections or custom text "
            "towers are not supported)")
    return out


# --- the converter -----------------------------------------------------------------------


def _text_preprocessor(folder: Path, cfg: ClipConfig) -> dict[str, Any] | None:
    context, vocab = cfg.text["max_position_embeddings"], cfg.text["vocab_size"]
    if (folder / TOKENIZER_JSON).is_file():
        return text_preprocessor(folder / TOKENIZER_JSON, context, vocab)
    warnings.warn(f"no {TOKENIZER_JSON} beside the weights in {folder}: the text preprocessor "
                  "is byte-text, whose ids do not match CLIP's BPE vocabulary; put the "
                  "model's tokenizer.json there for meaningful text embeddings", stacklevel=3)
    if vocab < BYTE_VOCAB:
        return None
    return {"type": "byte-text", "context_length": context, "lowercase": True}


class OpenAIClipConverter:
    """OpenAI CLIP / open_clip ViT weights (.safetensors, weights-only .pt, open_clip folder)."""

    def detect(self, source: Path) -> bool:
        if source.is_dir():
            return any((source / name).is_file() for name in OPEN_CLIP_FILES)
        if source.suffix == ".safetensors":
            keys = set(safetensors_keys(source))
            return {"visual.conv1.weight", "visual.proj"} <= keys
        return source.suffix in (".pt", ".pth")

    def to_mmcore(self, source: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
        state = read_state(source)
        folder = source if source.is_dir() else source.parent
        config = read_mapping(folder / OPEN_CLIP_CONFIG)
        cfg = infer_config(state, config.get("model_cfg"), str(source))
        hf_state = openai_to_hf(state, str(source))
        check_weights(cfg, hf_state, str(source))
        preprocess = config.get("preprocess_cfg", {})
        spec = spec_from_clip_config(
            cfg, name=source.resolve().stem, text_preprocessor=_text_preprocessor(folder, cfg),
            image_preprocessor=image_preprocessor(cfg.vision["image_size"],
                                                  preprocess.get("mean"), preprocess.get("std"),
                                                  OPEN_CLIP_CONFIG),
            metadata={"converted_from": {"format": "openai-clip",
                                         "source": str(source.resolve())}},
            source="converted from OpenAI/open_clip CLIP")
        return spec, hf_to_mmcore_tensors(hf_state, str(source))

"""Does a CLIP config agree with the weights it came with? Checked before anything is built,
so the error names the config key and both shapes rather than an mmcore tensor name."""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor

from mmcore.errors import CheckpointError
from mmcore_clip.hf_config import ClipConfig

#: (HF tensor key, the shape the config implies, the config keys that fix it)
Expectation = tuple[str, tuple[int, ...], tuple[str, ...]]


def _vision(cfg: ClipConfig) -> list[Expectation]:
    v = cfg.vision
    width, grid = v["hidden_size"], v["image_size"] // v["patch_size"]
    emb = "vision_model.embeddings."
    return [
        (f"{emb}class_embedding", (width,), ("hidden_size",)),
        (f"{emb}patch_embedding.weight",
         (width, v["num_channels"], v["patch_size"], v["patch_size"]),
         ("hidden_size", "num_channels", "patch_size")),
        (f"{emb}position_embedding.weight", (grid * grid + 1, width),
         ("image_size", "patch_size", "hidden_size")),
        ("vision_model.encoder.layers.0.mlp.fc1.weight", (v["intermediate_size"], width),
         ("intermediate_size", "hidden_size")),
    ]


def _text(cfg: ClipConfig) -> list[Expectation]:
    t = cfg.text
    width, emb = t["hidden_size"], "text_model.embeddings."
    return [
        (f"{emb}token_embedding.weight", (t["vocab_size"], width), ("vocab_size", "hidden_size")),
        (f"{emb}position_embedding.weight", (t["max_position_embeddings"], width),
         ("max_position_embeddings", "hidden_size")),
        ("text_model.encoder.layers.0.mlp.fc1.weight", (t["intermediate_size"], width),
         ("intermediate_size", "hidden_size")),
    ]


def _describe(cfg: ClipConfig, section: str, keys: tuple[str, ...]) -> str:
    values = cfg.vision if section == "vision_config" else cfg.text
    return ", ".join(f"{section}.{k}={values[k]}" for k in keys)


def _shape_problems(cfg: ClipConfig, state: Mapping[str, Tensor]) -> list[str]:
    rows = [("vision_config", *e) for e in _vision(cfg)] + [("text_config", *e)
                                                          for e in _text(cfg)]
    problems = []
    for section, key, expected, keys in rows:
        if key in state and tuple(state[key].shape) != expected:
            problems.append(f"{key} has shape {tuple(state[key].shape)} but the config "
                            f"({_describe(cfg, section, keys)}) implies {expected}")
    for key, tower in (("visual_projection.weight", cfg.vision),
                       ("text_projection.weight", cfg.text)):
        expected = (cfg.projection_dim, tower["hidden_size"])
        if key in state and tuple(state[key].shape) != expected:
            problems.append(f"{key} has shape {tuple(state[key].shape)} but the config "
                            f"(projection_dim={cfg.projection_dim}, hidden_size="
                            f"{tower['hidden_size']}) implies {expected}")
    return problems


def _layer_problems(cfg: ClipConfig, state: Mapping[str, Tensor]) -> list[str]:
    problems = []
    for tower, section, values in (("vision", "vision_config", cfg.vision),
                                   ("text", "text_config", cfg.text)):
        pattern = re.compile(rf"^{tower}_model\.encoder\.layers\.(\d+)\.")
        found = {int(m.group(1)) for k in state if (m := pattern.match(k))}
        if found and len(found) != values["num_hidden_layers"]:
            problems.append(f"{section}.num_hidden_layers={values['num_hidden_layers']} but "
                            f"the weights hold {len(found)} {tower} layers")
    return problems


def check_weights(cfg: ClipConfig, state: Mapping[str, Tensor], source: str) -> None:
    """CheckpointError listing every tensor (HF keys) whose shape the config contradicts."""
    problems = _shape_problems(cfg, state) + _layer_problems(cfg, state)
    if problems:
        raise CheckpointError(f"{source}: the config disagrees with the weights: "
                              + "; ".join(problems))

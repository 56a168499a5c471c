"""Hugging Face Whisper folders -> mmcore: the spec and the weights, without transformers.

A folder holds ``config.json`` (``model_type: whisper``), ``model.safetensors`` (or shards
with ``model.safetensors.index.json``), ``tokenizer.json`` and optionally
``generation_config.json``. Any size works (tiny to large-v3, 80 or 128 mel bins) and
English-only ``.en`` models. Correspondences:

* encoder ``conv1``/``conv2``/``embed_positions`` -> the ``conv-stem`` tokenizer (positions
  are its saved ``fixed_positions`` buffer); encoder layers -> ``audio-transformer`` blocks
  (``self_attn`` -> ``attn``, ``self_attn_layer_norm`` -> ``norm1``, ``final_layer_norm`` ->
  ``norm2``, ``fc1``/``fc2`` -> ``mlp``; Whisper's ``k_proj`` has no bias, so mmcore's is zero);
  the encoder's ``layer_norm`` -> ``final_norm``.
* the decoder -> the ``whisper-decoder`` head, key for key; ``proj_out`` is tied to
  ``embed_tokens`` (checked when a checkpoint stores it).
* special tokens: generation_config.json first, then config.json, then tokenizer.json's
  added tokens; suppress lists likewise (ids outside the vocabulary are dropped).
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
from mmcore_whisper.keys import HEAD, HF_TO_MMCORE

WEIGHTS = hf.SAFETENSORS
INDEX = hf.SAFETENSORS_INDEX
#: config.json keys the spec needs
REQUIRED = ("d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
            "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "vocab_size",
            "num_mel_bins", "max_source_positions", "max_target_positions")
_LANGUAGE = re.compile(r"^<\|([a-z]{2,3}(?:-[a-z]+)?)\|>$", re.I)


# -- reading the folder -------------------------------------------------------------------


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object (CheckpointError naming the file otherwise)."""
    return hf.read_json_object(path)


def check_folder(folder: Path) -> None:
    """A clear CheckpointError for a folder that is not a usable Whisper checkpoint."""
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder (a Hugging Face Whisper checkpoint is "
                              "a folder with config.json and model.safetensors)")
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder} has no config.json")
    if not hf.has_weights(folder):
        hf.read_weights(folder)  # raises, naming a pickle when the folder holds one


def read_weights(folder: Path) -> dict[str, Tensor]:
    """Every tensor of the folder's safetensors file(s)."""
    return hf.read_weights(folder)


def _config_value(config: Mapping[str, Any], key: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise CheckpointError(f"config.json: {key} must be a positive integer, got {value!r}")
    return value


# -- special tokens -----------------------------------------------------------------------


def _added_tokens(folder: Path) -> dict[str, int]:
    """tokenizer.json's added tokens: content -> id (empty without the file)."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return {}
    added = read_json(path).get("added_tokens", [])
    return {t["content"]: int(t["id"]) for t in added if isinstance(t, dict) and "id" in t}


def _first(key: str, *sources: Mapping[str, Any]) -> Any:
    for source in sources:
        if source.get(key) is not None:
            return source[key]
    return None


def _languages(generation: Mapping[str, Any], added: Mapping[str, int],
               vocab_size: int) -> dict[str, int]:
    """Language code -> token; empty for English-only models."""
    if generation.get("is_multilingual") is False:
        return {}
    table = generation.get("lang_to_id")
    if isinstance(table, dict) and table:
        return {_code(k): int(v) for k, v in table.items()}
    if "is_multilingual" not in generation and vocab_size < 51865:
        return {}  # OpenAI's rule: English-only vocabularies have 51864 tokens
    start, stop = added.get("<|startoftranscript|>"), added.get("<|translate|>")
    if start is None or stop is None:
        return {}
    return {_code(c): i for c, i in added.items() if start < i < stop and _LANGUAGE.match(c)}


def _code(token: str) -> str:
    return token.strip().removeprefix("<|").removesuffix("|>").lower()


def special_tokens(folder: Path, config: Mapping[str, Any], vocab_size: int) -> dict[str, Any]:
    """The ``tokens`` params of the whisper-decoder head."""
    generation = read_json(folder / "generation_config.json") \
        if (folder / "generation_config.json").is_file() else {}
    added = _added_tokens(folder)
    eos = _first("eos_token_id", generation, config)
    eos = eos[0] if isinstance(eos, list) else eos
    start = _first("decoder_start_token_id", generation, config)
    eos = eos if eos is not None else added.get("<|endoftext|>")
    start = start if start is not None else added.get("<|startoftranscript|>")
    if eos is None or start is None:
        raise CheckpointError(f"{folder}: cannot tell <|endoftext|> and <|startoftranscript|> "
                              "ids (no generation_config.json, config.json ids or "
                              "tokenizer.json)")
    languages = _languages(generation, added, vocab_size)
    tasks = generation.get("task_to_id") or (
        {t: added[f"<|{t}|>"] for t in ("transcribe", "translate") if f"<|{t}|>" in added}
        if languages else {})
    return {
        "eos": int(eos), "start": int(start),
        "no_timestamps": generation.get("no_timestamps_token_id",
                                        added.get("<|notimestamps|>")),
        "languages": languages, "tasks": {k: int(v) for k, v in tasks.items()},
        "suppress": _in_vocab(_first("suppress_tokens", generation, config), vocab_size),
        "begin_suppress": _in_vocab(_first("begin_suppress_tokens", generation, config),
                                    vocab_size),
        "no_speech": added.get("<|nospeech|>", added.get("<|nocaptions|>")),
        "previous": added.get("<|startofprev|>"),
        "max_initial_timestamp_index": generation.get("max_initial_timestamp_index"),
        "max_length": _first("max_length", generation, config),
        "tokenizer": str((folder / "tokenizer.json").resolve())
        if (folder / "tokenizer.json").is_file() else None,
        "alignment_heads": _alignment_heads(generation.get("alignment_heads")),
    }


def _alignment_heads(pairs: Any) -> list[list[int]] | None:
    """generation_config.json's ``alignment_heads`` ([[layer, head], ...]) or None."""
    if not pairs:
        return None
    if not all(isinstance(p, list) and len(p) == 2 for p in pairs):
        raise CheckpointError(f"generation_config.json: alignment_heads must be [[layer, "
                              f"head], ...], got {pairs!r}")
    return [[int(layer), int(h)] for layer, h in pairs]


def _in_vocab(ids: Any, vocab_size: int) -> list[int]:
    return [int(i) for i in (ids or []) if 0 <= int(i) < vocab_size]


# -- the spec -----------------------------------------------------------------------------


def _activation(config: Mapping[str, Any]) -> str:
    return hf.activation(config.get("activation_function", "gelu"), "activation_function")


def _mlp_ratio(width: int, hidden: int) -> float:
    ratio = hidden / width
    if int(width * ratio) != hidden:
        raise CheckpointError(f"config.json: encoder_ffn_dim {hidden} is not representable "
                              f"as d_model {width} x mlp_ratio")
    return ratio


def _check_supported(config: Mapping[str, Any]) -> None:
    if config.get("scale_embedding"):
        raise CheckpointError("config.json: scale_embedding is true; Whisper checkpoints do "
                              "not scale embeddings and mmcore's decoder does not either")
    if config.get("model_type") != "whisper":
        raise CheckpointError(f"config.json: model_type is {config.get('model_type')!r}, "
                              "not 'whisper'")


def spec_from_folder(folder: Path, config: Mapping[str, Any]) -> dict[str, Any]:
    """An mmcore spec (a mapping for :func:`mmcore.load_spec`) for a Whisper folder."""
    _check_supported(config)
    sizes = {key: _config_value(config, key) for key in REQUIRED}
    d, mels, act = sizes["d_model"], sizes["num_mel_bins"], _activation(config)
    audio = {
        "preprocessor": {"type": "audio", "n_mels": mels},
        "tokenizer": {"type": "conv-stem", "width": d, "n_mels": mels,
                      "frames": 2 * sizes["max_source_positions"]},
        "encoder": {"type": "audio-transformer", "layers": sizes["encoder_layers"],
                    "heads": sizes["encoder_attention_heads"], "act": act,
                    "mlp_ratio": _mlp_ratio(d, sizes["encoder_ffn_dim"])},
    }
    head = {"type": "whisper-decoder", "context": "audio", "vocab_size": sizes["vocab_size"],
            "width": d, "layers": sizes["decoder_layers"],
            "heads": sizes["decoder_attention_heads"], "ffn_dim": sizes["decoder_ffn_dim"],
            "max_positions": sizes["max_target_positions"], "act": act,
            "tokens": special_tokens(folder, config, sizes["vocab_size"])}
    return {"name": f"whisper-{folder.resolve().name}",
            "description": f"converted from Hugging Face Whisper at {folder.resolve()} "
                           f"({d} wide, {sizes['encoder_layers']}+{sizes['decoder_layers']} "
                           f"layers, {mels} mel bins)",
            "modalities": {"audio": audio}, "fusion": {"type": "late"},
            "heads": {HEAD: head}}


# -- the weights --------------------------------------------------------------------------


def _strip_prefix(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``model.encoder...`` (WhisperForConditionalGeneration) or ``encoder...``
    (WhisperModel) -> ``encoder...``; ``proj_out.weight`` kept as is."""
    return {k.removeprefix("model."): v for k, v in state.items()}


def mmcore_key(key: str) -> str:
    """The mmcore state-dict key of one (prefix-stripped) HF Whisper key."""
    target = HF_TO_MMCORE.target(key)
    assert target is not None  # the map ignores nothing
    return target


def whisper_to_mmcore(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename an HF Whisper state dict to the mmcore model's keys; add the encoder's zero
    ``k_proj`` biases; check a stored ``proj_out`` is the tied embedding."""
    stripped = _strip_prefix(state)
    proj = stripped.pop("proj_out.weight", None)
    embed = stripped.get("decoder.embed_tokens.weight")
    if proj is not None and (embed is None or proj.shape != embed.shape
                             or not torch.equal(proj, embed)):
        raise CheckpointError("proj_out.weight differs from decoder.embed_tokens.weight; "
                              "mmcore's Whisper decoder ties them, as every Whisper does")
    out = HF_TO_MMCORE.apply(stripped, source="HF Whisper state dict")
    for key, value in list(out.items()):
        if key.startswith("encoders.audio.") and key.endswith("attn.k_proj.weight"):
            out[key.removesuffix("weight") + "bias"] = torch.zeros(value.shape[0],
                                                                   dtype=value.dtype)
    return out


class HFWhisperConverter:
    """``hf-whisper``: a Hugging Face Whisper folder (any size, .en included), in and out."""

    def detect(self, source: Path) -> bool:
        return source.is_dir() and hf.config_model_type(source) == "whisper"

    def to_mmcore(self, source: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
        check_folder(source)
        config = hf.read_config(source)
        spec = spec_from_folder(source, config)
        return spec, whisper_to_mmcore(read_weights(source))

    def from_mmcore(self, model: Any, out: Path) -> None:
        from mmcore_whisper.export import export_folder

        export_folder(model, Path(out))


def make_converter() -> HFWhisperConverter:
    return HFWhisperConverter()

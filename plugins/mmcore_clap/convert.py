"""``hf-clap``: Hugging Face ``ClapModel`` folders -> mmcore (spec + state dict).

A folder holds ``config.json`` (``model_type: clap``), ``model.safetensors`` (or shards
listed by ``model.safetensors.index.json``; read through :mod:`mmcore.convert.hf`) and, when
present, ``tokenizer.json`` (RoBERTa BPE) and ``preprocessor_config.json`` (the
``ClapFeatureExtractor`` settings). Nothing here imports ``transformers``. The imported
model is an ordinary composition of this plugin's components:

* audio: ``clap-audio`` log-mel -> ``htsat-patch-embedding`` -> ``swin-transformer``;
* text: ``hf-tokenizer`` -> ``roberta-embedding`` -> ``bert-encoder``;
* fusion ``late-mlp``: audio mean-pooled, text through BERT's tanh pooler on ``<s>``, each
  projected by Linear -> ReLU -> Linear; objective ``two-scale-contrastive`` holds
  ``(logit_scale_a, logit_scale_t)``.

Only ``enable_fusion: false`` checkpoints (e.g. ``laion/clap-htsat-unfused``,
``laion/larger_clap_general``) are supported: the fused variant's attentional feature
fusion of four mel crops is not implemented, and such a folder is refused by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from mmcore.convert import hf
from mmcore.errors import CheckpointError

#: HF config defaults (transformers' configuration_clap.py), for configs saved as diffs
TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 50265, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "hidden_act": "gelu", "max_position_embeddings": 514,
    "type_vocab_size": 1, "layer_norm_eps": 1e-12, "pad_token_id": 1, "bos_token_id": 0,
    "eos_token_id": 2}
AUDIO_DEFAULTS: dict[str, Any] = {
    "window_size": 8, "num_mel_bins": 64, "spec_size": 256, "hidden_act": "gelu",
    "patch_size": 4, "patch_stride": [4, 4], "hidden_size": 768, "depths": [2, 2, 6, 2],
    "num_attention_heads": [4, 8, 16, 32], "enable_fusion": False,
    "patch_embed_input_channels": 1, "flatten_patch_embeds": True,
    "patch_embeds_hidden_size": 96, "enable_patch_layer_norm": True, "qkv_bias": True,
    "mlp_ratio": 4.0, "layer_norm_eps": 1e-5}
TOP_DEFAULTS: dict[str, Any] = {"logit_scale_init_value": 1 / 0.07, "projection_dim": 512,
                                "projection_hidden_act": "relu"}
#: LAION CLAP tokenises text to 77 tokens (padding="max_length", truncation=True)
CONTEXT_LENGTH = 77

_FIXED_PREFIXES = {
    "text_model.embeddings.word_embeddings.": "tokenizers.text.word_embeddings.",
    "text_model.embeddings.position_embeddings.": "tokenizers.text.position_embeddings.",
    "text_model.embeddings.token_type_embeddings.": "tokenizers.text.token_type_embeddings.",
    "text_model.embeddings.LayerNorm.": "tokenizers.text.norm.",
    "text_model.pooler.dense.": "fusion.poolers.text.",
    "text_projection.linear1.": "fusion.projections.text.fc1.",
    "text_projection.linear2.": "fusion.projections.text.fc2.",
    "audio_projection.linear1.": "fusion.projections.audio.fc1.",
    "audio_projection.linear2.": "fusion.projections.audio.fc2.",
    "audio_model.audio_encoder.batch_norm.": "tokenizers.audio.batch_norm.",
    "audio_model.audio_encoder.patch_embed.proj.": "tokenizers.audio.proj.",
    "audio_model.audio_encoder.patch_embed.norm.": "tokenizers.audio.norm.",
    "audio_model.audio_encoder.norm.": "encoders.audio.final_norm.",
}
_TEXT_PARTS = {
    "attention.self.query.": "attn.q_proj.", "attention.self.key.": "attn.k_proj.",
    "attention.self.value.": "attn.v_proj.", "attention.output.dense.": "attn.out_proj.",
    "attention.output.LayerNorm.": "norm1.", "intermediate.dense.": "mlp.fc1.",
    "output.dense.": "mlp.fc2.", "output.LayerNorm.": "norm2."}
_AUDIO_PARTS = {
    "layernorm_before.": "norm1.", "attention.self.query.": "attn.query.",
    "attention.self.key.": "attn.key.", "attention.self.value.": "attn.value.",
    "attention.self.relative_position_bias_table": "attn.relative_position_bias_table",
    "attention.output.dense.": "attn.out_proj.", "layernorm_after.": "norm2.",
    "intermediate.dense.": "mlp.fc1.", "output.dense.": "mlp.fc2."}
_TEXT_LAYER = "text_model.encoder.layer.{}."
_AUDIO_BLOCK = "audio_model.audio_encoder.layers.{}.blocks.{}."
_MERGE = "audio_model.audio_encoder.layers.{}.downsample."


def _rule(prefix: str, target: str, rest: str, new: str) -> tuple[str, str]:
    """A rule for ``prefix + rest`` (``*`` after a trailing dot: any suffix)."""
    tail = "*" if rest.endswith(".") else ""
    return prefix + rest + tail, target + new + tail


#: HF ``ClapModel`` keys -> mmcore keys (the logit scales are handled apart); buffers HF
#: saves that mmcore recomputes are dropped
HF_TO_MMCORE = hf.KeyMap(
    [*((old + "*", new + "*") for old, new in _FIXED_PREFIXES.items()),
     *(_rule(_TEXT_LAYER, "encoders.text.layers.{}.", old, new)
       for old, new in _TEXT_PARTS.items()),
     *(_rule(_AUDIO_BLOCK, "encoders.audio.stages.{}.blocks.{}.", old, new)
       for old, new in _AUDIO_PARTS.items()),
     *((f"{_MERGE}{part}.*", f"encoders.audio.stages.{{}}.merge.{part}.*")
       for part in ("norm", "reduction"))],
    ignore=["*position_ids", "*token_type_ids", "*relative_position_index"])
LOGIT_SCALES = ("logit_scale_a", "logit_scale_t")
SCALE_KEY = "objectives.contrastive.logit_scale"


# -- config -------------------------------------------------------------------------------


def read_config(source: Path) -> dict[str, Any]:
    """config.json with HF's defaults filled in: ``{"text_config": ..., "audio_config": ...,
    ...top-level}``. Refuses other model types and the fused variant."""
    path = source / hf.CONFIG
    data = hf.read_config(source)
    if data.get("model_type") != "clap":
        raise CheckpointError(f"{path} is not a CLAP config "
                              f"(model_type {data.get('model_type')!r})")
    config = {**TOP_DEFAULTS, **data}
    config["text_config"] = {**TEXT_DEFAULTS, **(data.get("text_config") or {})}
    config["audio_config"] = {**AUDIO_DEFAULTS, **(data.get("audio_config") or {})}
    if config["audio_config"]["enable_fusion"]:
        raise CheckpointError(
            f"{source} is a fused CLAP (audio_config.enable_fusion: true, e.g. "
            "laion/clap-htsat-fused); mmcore imports unfused CLAP checkpoints only "
            "(laion/clap-htsat-unfused, laion/larger_clap_*): the fused variant's "
            "attentional feature fusion of four mel crops is not implemented")
    return config


def _square(value: Any, what: str) -> int:
    """An int, or a pair of equal ints."""
    if isinstance(value, int):
        return value
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
        return int(value[0])
    raise CheckpointError(f"audio_config.{what} {value!r}: only square patches are supported")


def _mlp_ratio(hidden: int, intermediate: int) -> float:
    ratio = intermediate / hidden
    if int(hidden * ratio) != intermediate:
        raise CheckpointError(f"intermediate size {intermediate} is not hidden {hidden} x "
                              "a representable mlp_ratio")
    return ratio


def _audio_modality(ac: dict[str, Any], preprocessor: dict[str, Any]) -> dict[str, Any]:
    if ac["patch_embed_input_channels"] != 1 or not ac["flatten_patch_embeds"]:
        raise CheckpointError("audio_config: only one input channel and flattened patch "
                              "embeddings are supported")
    stages = len(ac["depths"])
    if ac["hidden_size"] != ac["patch_embeds_hidden_size"] * 2 ** (stages - 1):
        raise CheckpointError(f"audio_config.hidden_size {ac['hidden_size']} is not "
                              f"patch_embeds_hidden_size x 2**{stages - 1}")
    stride = _square(ac["patch_stride"], "patch_stride")
    return {
        "preprocessor": {"type": "clap-audio", **preprocessor},
        "tokenizer": {"type": "htsat-patch-embedding", "width": ac["patch_embeds_hidden_size"],
                      "n_mels": ac["num_mel_bins"], "spec_size": ac["spec_size"],
                      "patch_size": _square(ac["patch_size"], "patch_size"),
                      "patch_stride": stride, "patch_norm": ac["enable_patch_layer_norm"]},
        "encoder": {"type": "swin-transformer", "grid_size": ac["spec_size"] // stride,
                    "depths": list(ac["depths"]), "heads": list(ac["num_attention_heads"]),
                    "window_size": ac["window_size"], "mlp_ratio": ac["mlp_ratio"],
                    "qkv_bias": ac["qkv_bias"],
                    "act": hf.activation(ac["hidden_act"], "audio_config.hidden_act"),
                    "norm_eps": ac["layer_norm_eps"]},
    }


def _text_modality(tc: dict[str, Any], tokenizer_json: Path | None) -> dict[str, Any]:
    pad = tc["pad_token_id"]
    out: dict[str, Any] = {
        "tokenizer": {"type": "roberta-embedding", "vocab_size": tc["vocab_size"],
                      "width": tc["hidden_size"], "max_positions": tc["max_position_embeddings"],
                      "padding_idx": pad, "type_vocab_size": tc["type_vocab_size"],
                      "norm_eps": tc["layer_norm_eps"]},
        "encoder": {"type": "bert-encoder", "layers": tc["num_hidden_layers"],
                    "heads": tc["num_attention_heads"],
                    "act": hf.activation(tc["hidden_act"], "text_config.hidden_act"),
                    "mlp_ratio": _mlp_ratio(tc["hidden_size"], tc["intermediate_size"]),
                    "norm_eps": tc["layer_norm_eps"]},
    }
    if tokenizer_json is not None:
        pad_token, eos_token = _token_names(tokenizer_json, pad, tc["eos_token_id"])
        out["preprocessor"] = {"type": "hf-tokenizer", "path": str(tokenizer_json),
                               "context_length": min(CONTEXT_LENGTH,
                                                     tc["max_position_embeddings"] - pad - 1),
                               "pad_token": pad_token, "eos_token": eos_token}
    return out


def _token_names(path: Path, pad_id: int, eos_id: Any) -> tuple[str, str]:
    """The tokenizer's strings for the config's padding and end-of-text ids."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exception
        raise CheckpointError(f"cannot read tokenizer {path}: {exc}") from None
    eos_id = eos_id[0] if isinstance(eos_id, list) else eos_id
    pad, eos = tokenizer.id_to_token(pad_id), tokenizer.id_to_token(eos_id)
    if pad is None or eos is None:
        raise CheckpointError(f"{path} has no token for pad id {pad_id} or eos id {eos_id}")
    return pad, eos


def preprocessor_params(source: Path, n_mels: int) -> dict[str, Any]:
    """``clap-audio`` params from preprocessor_config.json, else LAION's unfused defaults."""
    path = source / "preprocessor_config.json"
    if not path.is_file():
        return {"n_mels": n_mels}
    fe = hf.read_json_object(path)
    if fe.get("feature_size", n_mels) != n_mels:
        raise CheckpointError(f"{path}: feature_size {fe['feature_size']} differs from the "
                              f"model's num_mel_bins {n_mels}")
    rate = fe.get("sampling_rate", 48_000)
    seconds = fe["nb_max_samples"] / rate if "nb_max_samples" in fe else \
        fe.get("max_length_s", 10)
    return {"n_mels": n_mels, "sample_rate": rate, "hop_length": fe.get("hop_length", 480),
            "n_fft": fe.get("fft_window_size", 1024), "max_length_s": seconds,
            "f_min": fe.get("frequency_min", 0), "f_max": fe.get("frequency_max", 14_000),
            "mel_scale": "htk" if fe.get("truncation", "fusion") == "fusion" else "slaney",
            "padding": fe.get("padding", "repeatpad")}


def spec_from_hf_clap_config(config: dict[str, Any], *, tokenizer_json: Path | None = None,
                             preprocessor: dict[str, Any] | None = None,
                             name: str = "hf-clap") -> dict[str, Any]:
    """An mmcore spec (a dict for :func:`mmcore.load_spec`) for a CLAP config (as
    :func:`read_config` returns it)."""
    ac, tc = config["audio_config"], config["text_config"]
    preprocessor = preprocessor or {"n_mels": ac["num_mel_bins"]}
    return {
        "name": name,
        "description": f"converted from transformers ClapModel (HTSAT {ac['depths']} x "
                       f"{ac['patch_embeds_hidden_size']}, RoBERTa {tc['num_hidden_layers']} x "
                       f"{tc['hidden_size']}, {config['projection_dim']}-d joint space)",
        "modalities": {"audio": _audio_modality(ac, preprocessor),
                       "text": _text_modality(tc, tokenizer_json)},
        "fusion": {"type": "late-mlp", "embed_dim": config["projection_dim"],
                   "act": hf.activation(config["projection_hidden_act"],
                                             "projection_hidden_act"),
                   "pooling": {"audio": "mean", "text": "cls"}, "tanh_pooler": ["text"]},
        "objectives": {"contrastive": {
            "type": "two-scale-contrastive", "pairs": [["audio", "text"]],
            "init_temperature": 1.0 / config["logit_scale_init_value"],
            "max_logit_scale": None}},
    }


# -- weights ------------------------------------------------------------------------------


def mmcore_key(hf_key: str) -> str | None:
    """The mmcore state-dict key of one HF key; None for recomputed buffers. Raises
    KeyError (a KeyMappingError) for a key with no equivalent."""
    return HF_TO_MMCORE.target(hf_key)


def hf_clap_to_mmcore(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename an HF ``ClapModel`` state dict to the mmcore model's keys; the two logit
    scales become one (1, 2) tensor. Raises KeyError on an unknown key."""
    import torch

    missing = [k for k in LOGIT_SCALES if k not in state_dict]
    if missing:
        raise KeyError(f"the checkpoint lacks {', '.join(missing)}")
    rest = {k: v for k, v in state_dict.items() if k not in LOGIT_SCALES}
    out = HF_TO_MMCORE.apply(rest, source="HF CLAP state dict")
    out[SCALE_KEY] = torch.stack([state_dict[k].reshape(()) for k in LOGIT_SCALES])[None]
    return out


class HFClapConverter:
    """``detect``: a folder whose config.json says ``model_type: clap``."""

    def detect(self, source: Path) -> bool:
        return hf.config_model_type(Path(source)) == "clap"

    def to_mmcore(self, source: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
        source = Path(source)
        if not source.is_dir():
            raise CheckpointError(f"hf-clap imports a folder (config.json + model.safetensors), "
                                  f"not {source}")
        config = read_config(source)
        tokenizer = source / "tokenizer.json"
        preprocessor = preprocessor_params(source, config["audio_config"]["num_mel_bins"])
        spec = spec_from_hf_clap_config(config, preprocessor=preprocessor,
                                        tokenizer_json=tokenizer if tokenizer.is_file() else None,
                                        name=f"hf-clap-{source.name}")
        try:
            return spec, hf_clap_to_mmcore(hf.read_weights(source))
        except KeyError as exc:
            raise CheckpointError(f"{source}: {exc}") from None

"""mmcore CLAP -> a Hugging Face ``ClapModel`` folder that transformers and ``hf-clap`` load.

Writes ``config.json`` (the audio and text towers from the spec, as :mod:`mmcore_clap.convert`
reads them back), ``model.safetensors`` (HF keys; the objective's (1, 2) logit scales become
``logit_scale_a`` / ``logit_scale_t``), the text tokenizer files the model carries and
``preprocessor_config.json`` (``ClapFeatureExtractor``). Only the composition ``hf-clap``
imports (HTSAT + RoBERTa, ``late-mlp``, ``two-scale-contrastive``) is exported; anything
else is refused naming the component.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from torch import Tensor

import mmcore_clap.convert as convert_module
from mmcore.convert import hf
from mmcore.convert.hf_export import token_names, write_json, write_tokenizer, write_weights
from mmcore.errors import CheckpointError
from mmcore_clap.convert import HF_TO_MMCORE, LOGIT_SCALES, SCALE_KEY

#: (component path, registered type) the export needs
_TYPES = (("modalities.audio.preprocessor", "clap-audio"),
          ("modalities.audio.tokenizer", "htsat-patch-embedding"),
          ("modalities.audio.encoder", "swin-transformer"),
          ("modalities.text.tokenizer", "roberta-embedding"),
          ("modalities.text.encoder", "bert-encoder"), ("fusion", "late-mlp"))


def _params(spec: Any) -> dict[str, Any]:
    """Component path -> validated params; CheckpointError listing the wrong components."""
    from mmcore.plugins import get_registry
    from mmcore.spec import params_of

    refs = {path: (kind, ref) for path, kind, ref in spec.components()}
    wrong = [f"{path} is {getattr(refs.get(path, (None, None))[1], 'type', None)!r}, not "
             f"{kind!r}" for path, kind in _TYPES
             if getattr(refs.get(path, (None, None))[1], "type", None) != kind]
    objectives = [n for n, r in spec.objectives.items() if r.type == "two-scale-contrastive"]
    if len(objectives) != 1:
        wrong.append("the model needs one two-scale-contrastive objective")
    if wrong:
        raise CheckpointError("cannot export to hf-clap: " + "; ".join(wrong))
    out = {path: params_of(get_registry(), refs[path][0], refs[path][1]) for path, _ in _TYPES}
    out["objective"] = objectives[0]
    objective: Any = params_of(get_registry(), "objective", spec.objectives[objectives[0]])
    out["init_temperature"] = objective.init_temperature
    return out


def hf_clap_config(spec: Any, text_ids: dict[str, int]) -> dict[str, Any]:
    """config.json of ``ClapModel``."""
    p = _params(spec)
    patch, swin = p["modalities.audio.tokenizer"], p["modalities.audio.encoder"]
    emb, bert, late = (p["modalities.text.tokenizer"], p["modalities.text.encoder"],
                       p["fusion"])
    stages = len(swin.depths)
    audio = {"window_size": swin.window_size, "num_mel_bins": patch.n_mels,
             "spec_size": patch.spec_size, "hidden_act": hf.hf_activation(swin.act),
             "patch_size": patch.patch_size, "patch_stride": [patch.patch_stride] * 2,
             "hidden_size": patch.width * 2 ** (stages - 1), "depths": list(swin.depths),
             "num_attention_heads": list(swin.heads), "enable_fusion": False,
             "patch_embed_input_channels": 1, "flatten_patch_embeds": True,
             "patch_embeds_hidden_size": patch.width,
             "enable_patch_layer_norm": patch.patch_norm, "qkv_bias": swin.qkv_bias,
             "mlp_ratio": swin.mlp_ratio, "layer_norm_eps": swin.norm_eps,
             "model_type": "clap_audio_model"}
    text = {"vocab_size": emb.vocab_size, "hidden_size": emb.width,
            "num_hidden_layers": bert.layers, "num_attention_heads": bert.heads,
            "intermediate_size": int(emb.width * bert.mlp_ratio),
            "hidden_act": hf.hf_activation(bert.act),
            "max_position_embeddings": emb.max_positions,
            "type_vocab_size": emb.type_vocab_size, "layer_norm_eps": bert.norm_eps,
            "pad_token_id": emb.padding_idx, **text_ids, "model_type": "clap_text_model"}
    return {"architectures": ["ClapModel"], "model_type": "clap", "audio_config": audio,
            "text_config": text, "projection_dim": late.embed_dim,
            "projection_hidden_act": hf.hf_activation(late.act),
            "logit_scale_init_value": 1.0 / p["init_temperature"], "torch_dtype": "float32"}


def hf_state(model: Any, objective: str) -> dict[str, Tensor]:
    """The model's tensors under ``ClapModel``'s keys."""
    state = dict(model.state_dict())
    scales = state.pop(f"objectives.{objective}.logit_scale", None)
    if scales is None or scales.numel() != 2:
        raise CheckpointError("cannot export to hf-clap: the objective holds no (1, 2) "
                              "logit scales")
    state.pop(SCALE_KEY, None)
    out = HF_TO_MMCORE.inverse(target="Hugging Face CLAP").apply(
        state, source="the mmcore model")
    for i, name in enumerate(LOGIT_SCALES):
        out[name] = scales.reshape(-1)[i].clone().reshape(())
    return out


def feature_extractor(params: Any) -> dict[str, Any]:
    """preprocessor_config.json for ``ClapFeatureExtractor`` (what ``hf-clap`` reads)."""
    rate, seconds = params.sample_rate, params.max_length_s
    seconds = int(seconds) if float(seconds).is_integer() else seconds  # HF pads by it
    return {"feature_extractor_type": "ClapFeatureExtractor", "feature_size": params.n_mels,
            "sampling_rate": rate, "hop_length": params.hop_length,
            "fft_window_size": params.n_fft, "max_length_s": seconds,
            "nb_max_samples": round(rate * seconds),
            "frequency_min": params.f_min, "frequency_max": params.f_max,
            "truncation": "fusion" if params.mel_scale == "htk" else "rand_trunc",
            "padding": params.padding, "padding_value": 0.0, "return_attention_mask": False,
            "processor_class": "ClapProcessor"}


def _text_ids(model: Any) -> tuple[dict[str, int], dict[str, bytes] | None]:
    """(bos/eos ids for text_config, the tokenizer files by name or None)."""
    from mmcore.assets import asset_files

    files = asset_files(model).get("modalities.text.preprocessor.path")
    pre = getattr(model.preprocessors.get("text"), "cfg", None)
    if not files or pre is None:
        return {"bos_token_id": 0, "eos_token_id": 2}, None
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(next(iter(files.values())).decode("utf-8"))
    eos = tokenizer.token_to_id(pre.eos_token) if pre.eos_token else None
    bos = tokenizer.token_to_id("<s>")
    return {"bos_token_id": 0 if bos is None else bos,
            "eos_token_id": 2 if eos is None else eos}, files


def export_folder(model: Any, out: Path) -> None:
    """Write ``model`` (an mmcore CLAP) as an HF ``ClapModel`` folder at ``out``."""
    ids, files = _text_ids(model)
    config = hf_clap_config(model.spec, ids)
    if not math.isfinite(config["logit_scale_init_value"]):
        raise CheckpointError("cannot export to hf-clap: init_temperature must be positive")
    tensors = hf_state(model, _params(model.spec)["objective"])
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / hf.CONFIG, config)
    write_weights(out, tensors)
    audio = _params(model.spec)["modalities.audio.preprocessor"]
    write_json(out / "preprocessor_config.json", feature_extractor(audio))
    if files is not None:
        content, *_ = files.values()
        names = {"bos_token": ids["bos_token_id"], "eos_token": ids["eos_token_id"],
                 "pad_token": config["text_config"]["pad_token_id"]}
        write_tokenizer(out, content, token_names(content, names),
                        sidecars=dict(list(files.items())[1:]),
                        model_max_length=model.preprocessors["text"].context_length)


class HFClapConverter(convert_module.HFClapConverter):
    """The registered converter, in and out: :mod:`mmcore_clap.convert` reads the folder, this
    module writes it (kept apart, so neither imports the other)."""

    def from_mmcore(self, model: Any, out: Path) -> None:
        export_folder(model, Path(out))

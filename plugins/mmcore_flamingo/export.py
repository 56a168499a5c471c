"""mmcore Flamingo (Idefics layout) -> a Hugging Face ``IdeficsForVisionText2Text`` folder
that ``from_pretrained`` loads: ``config.json``, ``model.safetensors`` and, when the text
preprocessor reads a ``tokenizer.json``, that file with a ``tokenizer_config.json``.

The HF config is read off the spec, and the spec :func:`spec_from_idefics_config` makes of
that config must equal the model's own, component by component (training-only settings
such as ``freeze_lm`` and ``init_gate`` aside): so an exported folder imports back to the
same model, and a Flamingo HF cannot hold (a GELU dense part, LayerNorm blocks, blocks
not starting at layer 0, grouped-query attention, ...) is refused with the differences
named. The vocabulary is split as the import joins it: ids below the ``<image>`` id
(``media_token_id``) are HF's ``vocab_size``, the rest its ``additional_vocab_size`` rows.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import Tensor

import mmcore_flamingo.convert as convert_module
from mmcore.convert import hf
from mmcore.convert.hf_export import token_names, write_json, write_tokenizer, write_weights
from mmcore.errors import CheckpointError
from mmcore_flamingo.convert import HEAD, HF_TO_MMCORE, IMAGE, TEXT, spec_from_idefics_config
from mmcore_llama.export import tokenizer_files

#: component paths the comparison leaves out (the tokenizer file is copied, not compared)
_SKIPPED = ("modalities.text.preprocessor",)
#: params that only matter for training
_TRAINING_ONLY = ("freeze_lm", "init_gate")
_XATTN = re.compile(r"^model\.gated_cross_attn_layers\.(\d+)\.")


def _fail(problems: list[str]) -> CheckpointError:
    return CheckpointError("cannot export to hf-idefics: " + "; ".join(problems))


def _component_params(spec: Any) -> dict[str, tuple[str, dict[str, Any]]]:
    """Component path -> (type, validated params) of a ModelSpec (objectives left out:
    HF keeps none)."""
    from mmcore.plugins import get_registry
    from mmcore.spec import params_of

    reg = get_registry()
    out = {}
    for path, kind, ref in spec.components():
        if kind == "objective" or path in _SKIPPED:
            continue
        params = params_of(reg, kind, ref).model_dump()
        out[path] = (ref.type, {k: v for k, v in params.items() if k not in _TRAINING_ONLY})
    return out


def _vision_config(params: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    patch = params[f"modalities.{IMAGE}.tokenizer"][1]
    vit = params[f"modalities.{IMAGE}.encoder"][1]
    return {"embed_dim": patch["width"], "image_size": patch["image_size"],
            "patch_size": patch["patch_size"], "num_channels": patch["channels"],
            "num_hidden_layers": vit["layers"], "num_attention_heads": vit["heads"],
            "intermediate_size": int(patch["width"] * vit["mlp_ratio"]),
            "hidden_act": hf.hf_activation(vit["act"]), "layer_norm_eps": vit["norm_eps"]}


def _perceiver_config(resampler: dict[str, Any] | None) -> dict[str, Any]:
    if resampler is None:
        return {"use_resampler": False}
    return {"use_resampler": True, "resampler_n_latents": resampler["num_latents"],
            "resampler_depth": resampler["layers"], "resampler_n_heads": resampler["heads"],
            "resampler_head_dim": resampler["head_dim"], "qk_layer_norms_perceiver": False}


def idefics_config(spec: Any) -> dict[str, Any]:
    """config.json of the export; CheckpointError unless importing it gives ``spec`` back."""
    from mmcore.plugins import get_registry
    from mmcore.spec import load_spec

    params = _component_params(spec)
    need = {f"modalities.{IMAGE}.tokenizer": "patch-embedding",
            f"modalities.{IMAGE}.encoder": "vit-features",
            f"modalities.{TEXT}.tokenizer": "lm-embedding", "fusion": "flamingo",
            f"heads.{HEAD}": "lm-head"}
    wrong = [f"{p} is {params.get(p, (None,))[0]!r}, not {t!r}" for p, t in need.items()
             if params.get(p, (None,))[0] != t]
    if wrong:
        raise _fail(wrong)
    tok, fusion = params[f"modalities.{TEXT}.tokenizer"][1], params["fusion"][1]
    total, media = tok["vocab_size"], fusion["media_token_id"]
    if media > total:
        raise _fail([f"the <image> id {media} lies outside the vocabulary of {total}"])
    rope = fusion["rope_scaling"].get("type", "default")
    config: dict[str, Any] = {
        "architectures": ["IdeficsForVisionText2Text"], "model_type": "idefics",
        "vocab_size": media, "additional_vocab_size": total - media,
        "hidden_size": tok["width"], "intermediate_size": fusion["ffn"],
        "num_hidden_layers": fusion["layers"], "num_attention_heads": fusion["heads"],
        "cross_layer_interval": fusion["every"], "max_position_embeddings": tok["context_length"],
        "rms_norm_eps": fusion["norm_eps"],
        "rope_parameters": {"rope_type": rope, "rope_theta": fusion["rope_theta"]},
        "alpha_type": fusion["gate"], "alpha_initializer": "zeros", "qk_layer_norms": False,
        "hidden_act": "silu", "tie_word_embeddings": False,
        "use_resampler": fusion["resampler"] is not None,
        "perceiver_config": _perceiver_config(fusion["resampler"]),
        "vision_config": _vision_config(params), "torch_dtype": "float32",
        **{k: tok[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}}
    try:
        imported = spec_from_idefics_config(config, Path(spec.name or "model"))
    except CheckpointError as exc:
        raise _fail([str(exc)]) from None
    expected = _component_params(load_spec(imported, get_registry()))
    problems = [f"{path} would import as {want} (the model has {params.get(path)})"
                for path, want in expected.items() if params.get(path) != want]
    problems += [f"{path} has no IdeficsForVisionText2Text equivalent"
                 for path in params if path not in expected]
    if problems:
        raise _fail(problems)
    return config


def hf_state(model: Any, config: dict[str, Any]) -> dict[str, Tensor]:
    """The model's tensors under HF Idefics keys: cross-attention block of LM layer L ->
    ``gated_cross_attn_layers.{L / cross_layer_interval}``, gates reshaped to HF's (1,) or
    (1, 1, D), the tables split at ``vocab_size`` into the decoupled parts."""
    state = {k: v.detach() for k, v in model.state_dict().items()
             if not k.startswith("objectives.")}
    out = HF_TO_MMCORE.inverse(target="Hugging Face Idefics").apply(
        state, source="the mmcore model")
    every = int(config["cross_layer_interval"])
    out = {_XATTN.sub(lambda m: f"model.gated_cross_attn_layers.{int(m[1]) // every}.", k): v
           for k, v in out.items()}
    for key in [k for k in out if k.endswith(("alpha_cross_attn", "alpha_dense"))]:
        out[key] = out[key].reshape(1, 1, -1) if config["alpha_type"] == "vector" \
            else out[key].reshape(1)
    base = int(config["vocab_size"])
    for main, extra in (("model.embed_tokens.weight",
                         "model.embed_tokens.additional_embedding.weight"),
                        ("lm_head.weight", "lm_head.additional_fc.weight")):
        table = out[main]
        out[main] = table[:base]
        if config["additional_vocab_size"]:
            out[extra] = table[base:]
    return {k: v.clone().contiguous() for k, v in out.items()}


def export_hf_idefics(model: Any, out: Path) -> None:
    """Write ``model`` as a transformers IdeficsForVisionText2Text folder at ``out``."""
    spec = getattr(model, "spec", None)
    if spec is None:
        raise _fail(["the model has no spec"])
    config = idefics_config(spec)
    tensors = hf_state(model, config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_weights(out, tensors)
    write_json(out / hf.CONFIG, config)
    files = tokenizer_files(model, TEXT)  # the source's, embedded in a checkpoint
    if files:
        content = files.pop("tokenizer.json")
        ids = {k.removesuffix("_id"): config[k]
               for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
        write_tokenizer(out, content, token_names(content, ids), sidecars=files,
                        model_max_length=config["max_position_embeddings"])


class HFIdeficsConverter(convert_module.HFIdeficsConverter):
    """The registered converter, in and out: :mod:`mmcore_flamingo.convert` reads the folder, this
    module writes it (kept apart, so neither imports the other)."""

    def from_mmcore(self, model: Any, out: Path) -> None:
        """Write ``model`` as an HF Idefics folder
        (:func:`mmcore_flamingo.export.export_hf_idefics`)."""
        export_hf_idefics(model, Path(out))

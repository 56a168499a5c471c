"""mmcore Perceiver IO masked LM -> a Hugging Face ``PerceiverForMaskedLM`` folder
(``config.json``, ``model.safetensors``, ``tokenizer_config.json`` for transformers'
byte-level ``PerceiverTokenizer``) that ``from_pretrained`` loads.

The HF config is read off the spec, and the spec the import would make of that config
must equal the model's own, component by component: so every exported folder imports
back to the same model, and anything HF cannot hold (an untied vocabulary projection,
learned input padding, a final norm, other decoder settings) is refused with the
differences named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import mmcore_perceiver.hf_convert as hf_convert_module
from mmcore.convert import hf
from mmcore.convert.hf_export import write_json, write_weights
from mmcore.errors import CheckpointError
from mmcore_perceiver.hf_convert import HEAD, MASKED_LM, masked_lm_keys, masked_lm_spec


def _fail(problems: list[str]) -> CheckpointError:
    return CheckpointError("cannot export to hf-perceiver: " + "; ".join(problems))


def _component_params(spec: Any) -> dict[str, tuple[str, dict[str, Any]]]:
    """Component path -> (type, validated params with defaults) of a ModelSpec."""
    from mmcore.plugins import get_registry
    from mmcore.spec import params_of

    reg = get_registry()
    return {path: (ref.type, params_of(reg, kind, ref).model_dump())
            for path, kind, ref in spec.components()}


def perceiver_config(spec: Any) -> dict[str, Any]:
    """The PerceiverConfig (config.json) of a masked-LM spec; CheckpointError unless the
    import of that config gives the spec back."""
    from mmcore.plugins import get_registry
    from mmcore.spec import load_spec

    refs = {path: ref for path, _, ref in spec.components()}
    need = {"modalities.text.tokenizer": "token-embedding", "fusion": "perceiver",
            f"heads.{HEAD}": "query-classifier"}
    wrong = [f"{p} is {getattr(refs.get(p), 'type', None)!r}, not {t!r}"
             for p, t in need.items() if getattr(refs.get(p), "type", None) != t]
    if sorted(spec.modalities) != ["text"]:
        wrong.insert(0, f"the modalities must be [text], not {sorted(spec.modalities)}")
    if wrong:
        raise _fail(wrong)
    params = _component_params(spec)
    tok, fusion = params["modalities.text.tokenizer"][1], params["fusion"][1]
    config: dict[str, Any] = {
        "architectures": [MASKED_LM], "model_type": "perceiver",
        "num_latents": fusion["num_latents"], "d_latents": fusion["width"],
        "d_model": tok["width"], "num_blocks": fusion["repeats"],
        "num_self_attends_per_block": fusion["layers"],
        "num_self_attention_heads": fusion["heads"],
        "num_cross_attention_heads": fusion["cross_heads"],
        "self_attention_widening_factor": _integral(fusion["mlp_ratio"]),
        "cross_attention_widening_factor": _integral(fusion["cross_mlp_ratio"]
                                                     or fusion["mlp_ratio"]),
        "hidden_act": hf.hf_activation(fusion["act"]),
        "use_query_residual": fusion["query_residual"],
        "cross_attention_shape_for_attention":
            "kv" if fusion["cross_channels"] == "inputs" else "q",
        "vocab_size": tok["vocab_size"], "max_position_embeddings": tok["context_length"],
        "qk_channels": None, "v_channels": None, "torch_dtype": "float32"}
    expected = _component_params(load_spec(masked_lm_spec(hf.with_defaults(config, {})),
                                           get_registry()))
    problems = [f"{path} would import as {want} (the model has {params.get(path)})"
                for path, want in expected.items() if params.get(path) != want]
    problems += [f"{path} has no PerceiverForMaskedLM equivalent"
                 for path in params if path not in expected]
    if problems:
        raise _fail(problems)
    return config


def _integral(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def hf_state(model: Any) -> dict[str, Tensor]:
    """The model's tensors under HF keys; the vocabulary projection must equal the input
    embeddings (HF ties them)."""
    state = {k: v.detach() for k, v in model.state_dict().items()
             if not k.startswith("objectives.")}
    proj = state.pop(f"heads.{HEAD}.proj.weight")
    if not torch.equal(proj, state["tokenizers.text.embed.weight"]):
        raise _fail([f"heads.{HEAD}.proj.weight differs from tokenizers.text.embed.weight; "
                     "HF's masked LM ties its vocabulary projection to the input embeddings"])
    back = masked_lm_keys().inverse(target="Hugging Face Perceiver")
    out = back.apply(state, source="the mmcore model")
    return {k: v.clone().contiguous() for k, v in out.items()}


def export_hf_perceiver(model: Any, out: Path) -> None:
    """Write ``model`` as a transformers PerceiverForMaskedLM folder at ``out``."""
    spec = getattr(model, "spec", None)
    if spec is None:
        raise _fail(["the model has no spec"])
    config = perceiver_config(spec)
    tensors = hf_state(model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_weights(out, tensors)
    write_json(out / hf.CONFIG, config)
    # the byte-level tokenizer has no vocabulary file: its class and length are all it needs
    write_json(out / "tokenizer_config.json",
                {"tokenizer_class": "PerceiverTokenizer",
                 "model_max_length": config["max_position_embeddings"]})


class HFPerceiverConverter(hf_convert_module.HFPerceiverConverter):
    """The registered converter, in and out: :mod:`mmcore_perceiver.hf_convert` reads the
    folder, this module writes it (kept apart, so neither imports the other)."""

    def from_mmcore(self, model: Any, out: Path) -> None:
        """Write ``model`` as an HF PerceiverForMaskedLM folder
        (:func:`mmcore_perceiver.hf_export.export_hf_perceiver`)."""
        export_hf_perceiver(model, Path(out))

"""Import Hugging Face Perceiver checkpoints (``model_type: perceiver``) as mmcore models.

Implemented: ``PerceiverForMaskedLM`` (byte-level masked LM). Its parts become ordinary
mmcore components: the ``token-embedding`` tokenizer (HF's text preprocessor), the
``perceiver`` fusion without a decoder of its own (latents, input cross-attention and the
latent stack), and a ``query-classifier`` head (learned position queries, the decoder's
cross-attention, and the vocabulary projection: HF ties it to the input embeddings, mmcore
gets an untied copy that starts equal). Every other architecture or config option that
changes the computation is refused by name. Export: :mod:`mmcore_perceiver.hf_export`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from mmcore.convert.hf import KeyMap, activation, config_model_type, read_config, read_weights
from mmcore.errors import CheckpointError

MASKED_LM = "PerceiverForMaskedLM"
SUPPORTED = (MASKED_LM,)
#: HF's PerceiverForMaskedLM decoder settings (fixed in its constructor)
MLM_DECODER_HEADS, MLM_DECODER_QK = 8, 8 * 32
HEAD = "mlm"


def _cross_rules(source: str, target: str) -> list[tuple[str, str]]:
    """A ``PerceiverLayer`` with cross-attention -> :class:`CrossAttentionBlock`."""
    return [(f"{source}.attention.self.layernorm1.*", f"{target}.query_norm.*"),
            (f"{source}.attention.self.layernorm2.*", f"{target}.input_norm.*"),
            *_attention_rules(source, target),
            (f"{source}.layernorm.*", f"{target}.mlp_norm.*")]


def _attention_rules(source: str, target: str) -> list[tuple[str, str]]:
    return [(f"{source}.attention.self.query.*", f"{target}.attn.q_proj.*"),
            (f"{source}.attention.self.key.*", f"{target}.attn.k_proj.*"),
            (f"{source}.attention.self.value.*", f"{target}.attn.v_proj.*"),
            (f"{source}.attention.output.dense.*", f"{target}.attn.out_proj.*"),
            (f"{source}.mlp.dense1.*", f"{target}.mlp.fc1.*"),
            (f"{source}.mlp.dense2.*", f"{target}.mlp.fc2.*")]


def trunk_rules() -> list[tuple[str, str]]:
    """``perceiver.embeddings`` and ``perceiver.encoder`` -> the perceiver fusion."""
    blocks = "fusion.backbone.latent_blocks.blocks.{}"
    selfs = "perceiver.encoder.self_attends.{}"
    return [("perceiver.embeddings.latents", "fusion.backbone.latents"),
            *_cross_rules("perceiver.encoder.cross_attention", "fusion.backbone.encoder_cross"),
            (f"{selfs}.attention.self.layernorm1.*", f"{blocks}.norm1.*"),
            (f"{selfs}.layernorm.*", f"{blocks}.norm2.*"),
            *_attention_rules(selfs, blocks)]


def masked_lm_keys() -> KeyMap:
    decoder = "perceiver.decoder"
    head = f"heads.{HEAD}"
    return KeyMap([
        ("perceiver.input_preprocessor.embeddings.weight",
         "tokenizers.text.embed.weight"),
        ("perceiver.input_preprocessor.position_embeddings.weight",
         "tokenizers.text.positions.weight"),
        *trunk_rules(),
        (f"{decoder}.output_position_encodings.position_embeddings", f"{head}.queries.weight"),
        *_cross_rules(f"{decoder}.decoding_cross_attention", f"{head}.block"),
        ("embedding_decoder.bias", f"{head}.proj.bias"),
    ])


def _refuse(config: dict[str, Any], path: Path) -> None:
    """CheckpointError naming each config option mmcore does not implement."""
    problems = []
    for key in ("qk_channels", "v_channels"):
        if config.get(key) is not None:
            problems.append(f"{key}={config[key]} (only the default, None, is implemented)")
    shape = config.get("cross_attention_shape_for_attention", "kv")
    if shape not in ("kv", "q"):
        problems.append(f"cross_attention_shape_for_attention={shape!r} (kv or q)")
    if problems:
        raise CheckpointError(f"{path}/config.json: unsupported option(s): "
                              + "; ".join(problems))


def _architecture(config: dict[str, Any], path: Path) -> str:
    names = config.get("architectures") or []
    chosen = [n for n in names if n in SUPPORTED]
    if not chosen:
        raise CheckpointError(f"{path}/config.json: architectures {names} are not implemented;"
                              f" mmcore imports {', '.join(SUPPORTED)}")
    return chosen[0]


def fusion_params(config: dict[str, Any]) -> dict[str, Any]:
    """The ``perceiver`` fusion matching HF's ``PerceiverModel`` trunk."""
    shape = config.get("cross_attention_shape_for_attention", "kv")
    return {"type": "perceiver", "width": config["d_latents"],
            "num_latents": config["num_latents"],
            "layers": config["num_self_attends_per_block"],
            "heads": config["num_self_attention_heads"],
            "cross_heads": config["num_cross_attention_heads"], "num_outputs": 0,
            "mlp_ratio": config["self_attention_widening_factor"],
            "cross_mlp_ratio": config["cross_attention_widening_factor"], "min_padding": 0,
            "cross_channels": "inputs" if shape == "kv" else "latents",
            "query_residual": bool(config["use_query_residual"]),
            "repeats": config["num_blocks"], "final_norm": False,
            "act": activation(config.get("hidden_act"), "hidden_act")}


def masked_lm_spec(config: dict[str, Any]) -> dict[str, Any]:
    d_model, length = config["d_model"], config["max_position_embeddings"]
    return {
        "name": "perceiver-mlm",
        "description": "Perceiver IO byte-level masked language model (imported)",
        "modalities": {"text": {"tokenizer": {
            "type": "token-embedding", "vocab_size": config["vocab_size"], "width": d_model,
            "context_length": length}}},
        "fusion": fusion_params(config),
        "heads": {HEAD: {
            "type": "query-classifier", "num_classes": config["vocab_size"],
            "queries": {"type": "learned-positions", "shape": [length], "width": d_model},
            "heads": MLM_DECODER_HEADS, "qk_width": MLM_DECODER_QK, "v_width": d_model,
            "mlp_ratio": 1, "residual": False, "shape": [length]}},
    }


#: PerceiverConfig defaults for the keys the import reads (HF saves configs as diffs)
DEFAULTS: dict[str, Any] = {
    "num_latents": 256, "d_latents": 1280, "d_model": 768, "num_blocks": 1,
    "num_self_attends_per_block": 26, "num_self_attention_heads": 8,
    "num_cross_attention_heads": 8, "self_attention_widening_factor": 1,
    "cross_attention_widening_factor": 1, "hidden_act": "gelu", "use_query_residual": True,
    "vocab_size": 262, "max_position_embeddings": 2048,
    "cross_attention_shape_for_attention": "kv"}


class HFPerceiverConverter:
    """``hf-perceiver``: Hugging Face ``PerceiverForMaskedLM`` folders, in and out."""

    def detect(self, source: Path) -> bool:
        return Path(source).is_dir() and config_model_type(Path(source)) == "perceiver"

    def to_mmcore(self, source: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
        from mmcore.convert.hf import with_defaults

        source = Path(source)
        config = with_defaults(read_config(source, "perceiver"), DEFAULTS)
        _architecture(config, source)
        _refuse(config, source)
        weights = read_weights(source)
        state = masked_lm_keys().apply(weights, source=str(source))
        # HF ties the vocabulary projection to the input embeddings; mmcore keeps a copy
        state[f"heads.{HEAD}.proj.weight"] = state["tokenizers.text.embed.weight"]
        return masked_lm_spec(config), state

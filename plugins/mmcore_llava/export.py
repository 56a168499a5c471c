"""mmcore LLaVA -> a Hugging Face ``LlavaForConditionalGeneration`` folder (transformers 5
layout) that transformers and ``hf-llava`` load.

Writes ``config.json`` (``vision_config`` from the CLIP tower's spec, ``text_config`` as
``hf-llama`` writes it), ``model.safetensors`` (``model.vision_tower.vision_model.*``,
``model.language_model.*``, ``model.multi_modal_projector.*``, ``lm_head``), the tokenizer
files the ``llava-chat`` preprocessor carries and ``preprocessor_config.json``
(``CLIPImageProcessor``). A model with the built-in ``bytes`` vocabulary exports its weights
and configs only. The ``linear`` (LLaVA v1) projector has no transformers class and is
refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

import mmcore_llava.convert as convert_module
from mmcore.convert import hf
from mmcore.convert.hf_export import write_json, write_weights
from mmcore.errors import CheckpointError
from mmcore_clip.hf_clip import HF_ACTS
from mmcore_clip.hf_export import image_processor_config
from mmcore_llama.components import LMEmbedding, LMHead
from mmcore_llama.export import hf_config as lm_config
from mmcore_llama.export import write_lm_tokenizer
from mmcore_llava.convert import HEAD, HF_TO_MMCORE, IMAGE, TEXT
from mmcore_llava.fusion import LlavaFusion


def _parts(model: Any) -> tuple[LMEmbedding, LlavaFusion, LMHead, str]:
    """(text embedding, llava fusion, lm-head, its name); CheckpointError otherwise."""
    fusion = model.fusion
    if not isinstance(fusion, LlavaFusion):
        raise CheckpointError(f"hf-llava exports a llava model; this one's fusion is "
                              f"{type(fusion).__name__}")
    if (fusion.cfg.text, fusion.cfg.image) != (TEXT, IMAGE):
        raise CheckpointError(f"hf-llava exports modalities {TEXT!r} and {IMAGE!r}")
    if fusion.cfg.views:
        raise CheckpointError(f"hf-llava exports one vision tower; this model also joins the "
                              f"views {fusion.cfg.views}, which LlavaForConditionalGeneration "
                              "cannot hold")
    embedding = model.tokenizers[TEXT]
    heads = [(n, h) for n, h in model.heads.items() if isinstance(h, LMHead)]
    if not isinstance(embedding, LMEmbedding) or len(heads) != 1:
        raise CheckpointError("hf-llava exports an lm-embedding text tokenizer and one lm-head")
    if fusion.cfg.projector != "mlp2x_gelu":
        raise CheckpointError(f"projector {fusion.cfg.projector!r} has no transformers "
                              "LLaVA equivalent (its projector is mlp2x_gelu)")
    return embedding, fusion, heads[0][1], heads[0][0]


def _params(kind: str, ref: Any) -> Any:
    from mmcore.plugins import get_registry
    from mmcore.spec import params_of

    return params_of(get_registry(), kind, ref)


def vision_config(spec: Any) -> tuple[dict[str, Any], Any]:
    """(HF ``CLIPVisionConfig`` dict, the vit-features params) of the image modality."""
    image = spec.modalities[IMAGE]
    if (getattr(image.tokenizer, "type", None), getattr(image.encoder, "type", None)) != (
            "patch-embedding", "vit-features"):
        raise CheckpointError("hf-llava exports an image modality of patch-embedding + "
                              "vit-features (the CLIP tower)")
    patch, vit = _params("tokenizer", image.tokenizer), _params("encoder", image.encoder)
    problems = [message for ok, message in [
        (patch.cls_token and patch.positions == "learned" and not patch.bias,
         "patch-embedding needs cls_token, learned positions and no bias"),
        (vit.pre_norm and vit.final_norm and not vit.causal,
         "vit-features needs pre_norm and final_norm"),
        (vit.width in (None, patch.width), "vit-features width must be the patches' width"),
        (vit.act in HF_ACTS, f"activation {vit.act!r} has no HF equivalent")] if not ok]
    if problems:
        raise CheckpointError("cannot export to hf-llava: " + "; ".join(problems))
    return {"model_type": "clip_vision_model", "hidden_size": patch.width,
            "intermediate_size": int(patch.width * vit.mlp_ratio),
            "num_hidden_layers": vit.layers, "num_attention_heads": vit.heads,
            "num_channels": patch.channels, "image_size": patch.image_size,
            "patch_size": patch.patch_size, "hidden_act": HF_ACTS[vit.act],
            "layer_norm_eps": vit.norm_eps}, vit


def hf_llava_config(model: Any) -> dict[str, Any]:
    """config.json of ``LlavaForConditionalGeneration`` for ``model``."""
    embedding, fusion, head, _ = _parts(model)
    vision, vit = vision_config(model.spec)
    text = lm_config(embedding, fusion, head)  # type: ignore[arg-type]  # a DecoderLM trunk
    grid = vision["image_size"] // vision["patch_size"]
    return {
        "architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
        "vision_config": vision, "text_config": text,
        "image_token_index": fusion.cfg.image_token_id, "projector_hidden_act": "gelu",
        "multimodal_projector_bias": fusion.cfg.projector_bias,
        "vision_feature_layer": vit.feature_layer,
        "vision_feature_select_strategy": vit.select,
        "image_seq_length": grid * grid + (vit.select == "full"),
        "tie_word_embeddings": head.cfg.tied, "torch_dtype": "float32",
    }


def hf_state(model: Any, head_name: str) -> dict[str, Tensor]:
    """The model's tensors under transformers 5's LLaVA keys."""
    state = {k.replace(f"heads.{head_name}.", f"heads.{HEAD}.", 1): v
             for k, v in model.state_dict().items() if not k.startswith("objectives.")}
    back = HF_TO_MMCORE.inverse(target="Hugging Face LLaVA")
    return back.apply(state, source="the mmcore model")


def export_folder(model: Any, out: Path) -> None:
    """Write ``model`` as an HF LLaVA folder at ``out`` (created; files overwritten)."""
    embedding, _, _, head_name = _parts(model)
    config = hf_llava_config(model)
    tensors = hf_state(model, head_name)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / hf.CONFIG, config)
    write_weights(out, tensors)
    write_json(out / "preprocessor_config.json", image_processor_config(model.spec))
    write_lm_tokenizer(model, embedding, TEXT, out)


class HFLlavaConverter(convert_module.HFLlavaConverter):
    """The registered converter, in and out: :mod:`mmcore_llava.convert` reads the folder, this
    module writes it (kept apart, so neither imports the other)."""

    def from_mmcore(self, model: Any, out: Path) -> None:
        export_folder(model, Path(out))

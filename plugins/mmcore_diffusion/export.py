"""mmcore latent diffusion (U-Net + KL autoencoder + CLIP text encoder) -> a diffusers
Stable Diffusion folder that ``StableDiffusionPipeline.from_pretrained`` loads::

    model_index.json
    unet/          config.json, diffusion_pytorch_model.safetensors
    vae/           config.json, diffusion_pytorch_model.safetensors
    text_encoder/  config.json, model.safetensors            (CLIPTextModel)
    tokenizer/     vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json
    scheduler/     scheduler_config.json

The inverse of :mod:`mmcore_diffusion.importer`: configs are written from the spec (the
U-Net and autoencoder params are diffusers' own fields renamed), weights through the
inverse of the import's key maps (current diffusers attention names, not the legacy
ones), the tokenizer files from :func:`mmcore.checkpoint.model_assets`. A model of any
other shape (a DiT, another codec, a text tower that is not CLIP's) is refused by name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor

from mmcore.checkpoint import atomic_write, save_tensors
from mmcore.convert import hf
from mmcore.convert.hf_export import write_json
from mmcore.errors import CheckpointError
from mmcore_clip.hf_clip import HF_TO_MMCORE as CLIP_KEYS
from mmcore_diffusion.clip_bpe import BOS, EOS
from mmcore_diffusion.convert import SCHEDULER_CONFIG, WEIGHTS, unet_key_map, vae_key_map

#: legacy diffusers attention names the import also reads; the export writes current ones
_LEGACY = (".proj_attn.", ".query.", ".key.", ".value.")
_TYPES = (("modalities.image.tokenizer", "latent"), ("modalities.text.preprocessor", "clip-bpe"),
          ("modalities.text.tokenizer", "token-embedding"),
          ("modalities.text.encoder", "text-transformer"), ("fusion", "unet"))


def _fail(problems: list[str]) -> CheckpointError:
    return CheckpointError("cannot export to diffusers-sd: " + "; ".join(problems))


def _params(spec: Any) -> dict[str, dict[str, Any]]:
    """Component path -> validated params of the components the export reads;
    CheckpointError naming every part of another type."""
    from mmcore.plugins import get_registry
    from mmcore.spec import params_of

    refs = {path: (kind, ref) for path, kind, ref in spec.components()}
    wrong = [f"{path} is {getattr(refs.get(path, (None, None))[1], 'type', None)!r}, "
             f"not {kind!r}" for path, kind in _TYPES
             if getattr(refs.get(path, (None, None))[1], "type", None) != kind]
    if sorted(spec.modalities) != ["image", "text"]:
        wrong.insert(0, f"the modalities must be image and text, not {sorted(spec.modalities)}")
    if wrong:
        raise _fail(wrong)
    reg = get_registry()
    out = {path: params_of(reg, *refs[path]).model_dump() for path, _ in _TYPES}
    codec = out["modalities.image.tokenizer"]["codec"]
    if codec.get("type") != "kl-autoencoder":
        raise _fail([f"the latent tokenizer's codec is {codec.get('type')!r}, not "
                     "'kl-autoencoder'"])
    out["codec"] = reg.get("codec", "kl-autoencoder").config.model_validate(
        {k: v for k, v in codec.items() if k != "type"}).model_dump()
    return out


def unet_config(fusion: dict[str, Any]) -> dict[str, Any]:
    """diffusers ``UNet2DConditionModel`` config.json from the ``unet`` fusion's params."""
    return {
        "_class_name": "UNet2DConditionModel", "in_channels": fusion["in_channels"],
        "out_channels": fusion["out_channels"], "sample_size": fusion["sample_size"],
        "block_out_channels": list(fusion["block_out_channels"]),
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D"
                             for a in fusion["down_attention"]],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D"
                           for a in fusion["up_attention"]],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "layers_per_block": fusion["layers_per_block"],
        "attention_head_dim": list(fusion["heads"]),
        "cross_attention_dim": fusion["cross_attention_dim"],
        "transformer_layers_per_block": fusion["transformer_depth"],
        "norm_num_groups": fusion["norm_num_groups"], "norm_eps": fusion["norm_eps"],
        "flip_sin_to_cos": fusion["flip_sin_to_cos"], "freq_shift": fusion["freq_shift"],
        "use_linear_projection": fusion["linear_projection"], "act_fn": "silu"}


def vae_config(codec: dict[str, Any], image_size: int) -> dict[str, Any]:
    """diffusers ``AutoencoderKL`` config.json from the ``kl-autoencoder`` params."""
    levels = len(codec["block_out_channels"])
    return {
        "_class_name": "AutoencoderKL", "in_channels": codec["in_channels"],
        "out_channels": codec["out_channels"], "latent_channels": codec["latent_channels"],
        "block_out_channels": list(codec["block_out_channels"]),
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "layers_per_block": codec["layers_per_block"],
        "norm_num_groups": codec["norm_num_groups"], "act_fn": "silu",
        "scaling_factor": codec["scaling_factor"], "sample_size": image_size,
        "use_quant_conv": codec["use_quant_conv"],
        "use_post_quant_conv": codec["use_post_quant_conv"],
        "mid_block_add_attention": codec["mid_block_attention"]}


def text_encoder_config(tok: dict[str, Any], enc: dict[str, Any],
                        ids: dict[str, int]) -> dict[str, Any]:
    """transformers ``CLIPTextModel`` config.json from the text tokenizer and encoder."""
    problems = [message for ok, message in (
        (enc["causal"] and enc["final_norm"], "the text encoder needs causal and final_norm"),
        (tok["positions"] == "learned", "the text tokenizer needs learned positions"),
        (enc["width"] in (None, tok["width"]), "the text encoder's width differs"),
        (enc["act"] in hf.HF_ACTIVATIONS, f"text activation {enc['act']!r} has no HF name"),
    ) if not ok]
    if problems:
        raise _fail(problems)
    return {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model",
            "vocab_size": tok["vocab_size"], "hidden_size": tok["width"],
            "intermediate_size": int(tok["width"] * enc["mlp_ratio"]),
            "num_hidden_layers": enc["layers"], "num_attention_heads": enc["heads"],
            "max_position_embeddings": tok["context_length"],
            "hidden_act": hf.hf_activation(enc["act"]), "layer_norm_eps": enc["norm_eps"],
            "torch_dtype": "float32", **ids}


def _inverse(key_map: hf.KeyMap, target: str) -> hf.KeyMap:
    """``key_map`` backwards, legacy source names left out (so current ones are written)."""
    rules = [(new, old) for old, new in key_map.rules if not any(n in old for n in _LEGACY)]
    return hf.KeyMap(rules, target=target)


def _part(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v.detach() for k, v in state.items() if k.startswith(prefix)}


def hf_weights(model: Any) -> dict[str, dict[str, Tensor]]:
    """Sub-folder -> its tensors under diffusers / transformers keys."""
    state = model.state_dict()
    unet = _inverse(unet_key_map(), "diffusers UNet2DConditionModel").apply(
        _part(state, "fusion.network."), source="the mmcore U-Net")
    vae = _inverse(vae_key_map(), "diffusers AutoencoderKL").apply(
        _part(state, "tokenizers.image.codec."), source="the mmcore autoencoder")
    text = {k: v.detach() for k, v in state.items()
            if k.startswith(("tokenizers.text.", "encoders.text."))}
    encoder = CLIP_KEYS.inverse(target="transformers CLIPTextModel").apply(
        text, source="the mmcore text encoder")
    covered = len(unet) + len(vae) + len(encoder)
    if covered != len(state):
        extra = sorted(k for k in state if not k.startswith((
            "fusion.network.", "tokenizers.image.codec.", "tokenizers.text.", "encoders.text.")))
        raise _fail([f"no Stable Diffusion place for {', '.join(extra[:6])}"])
    return {name: {k: v.clone().contiguous() for k, v in part.items()}
            for name, part in (("unet", unet), ("vae", vae), ("text_encoder", encoder))}


def _write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def tokenizer_files(model: Any) -> tuple[bytes, bytes]:
    """(vocab.json, merges.txt) of the text preprocessor (:func:`model_assets`)."""
    from mmcore.checkpoint import model_assets

    assets = model_assets(model)
    found = [assets.get(f"modalities.text.preprocessor.{k}") for k in ("vocab", "merges")]
    if found[0] is None or found[1] is None:
        raise _fail(["the clip-bpe preprocessor's vocab.json / merges.txt are missing "
                     "(neither embedded in the checkpoint nor at their paths)"])
    return found[0], found[1]


def _token_ids(vocab: bytes, pad: str) -> dict[str, int]:
    table = json.loads(vocab)
    missing = [t for t in (BOS, EOS, pad) if t not in table]
    if missing:
        raise _fail([f"vocab.json lacks {', '.join(missing)}"])
    return {"bos_token_id": table[BOS], "eos_token_id": table[EOS], "pad_token_id": table[pad]}


def model_index(scheduler: str) -> dict[str, Any]:
    """model_index.json of a StableDiffusionPipeline without safety checker."""
    return {"_class_name": "StableDiffusionPipeline",
            "feature_extractor": [None, None], "image_encoder": [None, None],
            "requires_safety_checker": False, "safety_checker": [None, None],
            "scheduler": ["diffusers", scheduler],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"]}


def export_diffusers_sd(model: Any, out: Path) -> None:
    """Write ``model`` as a diffusers Stable Diffusion folder at ``out``."""
    spec = getattr(model, "spec", None)
    if spec is None:
        raise _fail(["the model has no spec"])
    p = _params(spec)
    fusion, pre = p["fusion"], p["modalities.text.preprocessor"]
    if fusion["null_condition"] != "empty-prompt":
        raise _fail(["Stable Diffusion's unconditional branch is the empty prompt: the "
                     "fusion needs null_condition: empty-prompt"])
    vocab, merges = tokenizer_files(model)
    text_cfg = text_encoder_config(p["modalities.text.tokenizer"],
                                   p["modalities.text.encoder"],
                                   _token_ids(vocab, pre["pad_token"]))
    weights = hf_weights(model)
    image_size = p["modalities.image.tokenizer"]["image_size"]
    out = Path(out)
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        (out / name).mkdir(parents=True, exist_ok=True)
    save_tensors(weights["unet"], out / "unet" / WEIGHTS, {"format": "pt"})
    save_tensors(weights["vae"], out / "vae" / WEIGHTS, {"format": "pt"})
    save_tensors(weights["text_encoder"], out / "text_encoder" / hf.SAFETENSORS,
                 {"format": "pt"})
    write_json(out / "unet" / hf.CONFIG, unet_config(fusion))
    write_json(out / "vae" / hf.CONFIG, vae_config(p["codec"], image_size))
    write_json(out / "text_encoder" / hf.CONFIG, text_cfg)
    _write_bytes(out / "tokenizer" / "vocab.json", vocab)
    _write_bytes(out / "tokenizer" / "merges.txt", merges)
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS,
               "pad_token": pre["pad_token"]}
    write_json(out / "tokenizer" / "tokenizer_config.json",
                {"tokenizer_class": "CLIPTokenizer",
                 "model_max_length": pre["context_length"], **special})
    write_json(out / "tokenizer" / "special_tokens_map.json", special)
    scheduler = dict(fusion["scheduler"])
    write_json(out / "scheduler" / SCHEDULER_CONFIG, scheduler)
    write_json(out / "model_index.json", model_index(str(scheduler.get("_class_name"))))

"""The ``diffusers-sd`` converter: a diffusers Stable Diffusion folder (``unet/``,
``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) -> an mmcore spec and state
dict, so ``mmcore import FOLDER --out sd.safetensors`` gives a model ``mmcore generate``
samples from.

The spec is the same composition a YAML spec builds: ``clip-bpe`` (reading the folder's
``tokenizer/vocab.json`` and ``merges.txt`` by path) -> ``token-embedding`` ->
``text-transformer``; ``image`` -> ``latent`` (the VAE as a ``kl-autoencoder`` codec); the
U-Net as the ``unet`` fusion, with the folder's scheduler config and the empty prompt as
the null condition. Unimplemented schedulers, block types and options are refused by name.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmcore.convert import hf
from mmcore.errors import CheckpointError
from mmcore.kernels import select_kernels
from mmcore_clip.hf_clip import HF_TO_MMCORE
from mmcore_diffusion.clip_bpe import EOS
from mmcore_diffusion.convert import (
    SCHEDULER_CONFIG,
    read_component_weights,
    sampler_from_config,
    unet_config,
    unet_key_map,
    vae_config,
    vae_key_map,
)
from mmcore_diffusion.unet import UNet2DCondition
from mmcore_diffusion.vae import AutoencoderKL

PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def _mapped(module: torch.nn.Module, state: dict[str, Tensor], key_map: hf.KeyMap,
            prefix: str, source: str) -> dict[str, Tensor]:
    expected = module.state_dict()
    renamed = key_map.apply(state, source=source, expected=expected)
    bad = [k for k, v in renamed.items() if v.shape != expected[k].shape]
    if bad:
        raise CheckpointError(f"{source}: shape mismatch for {', '.join(bad[:4])}")
    return {prefix + k: v for k, v in renamed.items()}


def _text_modality(folder: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    tc = hf.read_config(folder / "text_encoder")
    if tc.get("model_type") != "clip_text_model":
        raise CheckpointError(f"{folder / 'text_encoder'}: model_type "
                              f"{tc.get('model_type')!r} is not implemented (clip_text_model)")
    tok = folder / "tokenizer"
    tok_cfg = hf.read_json_object(tok / "tokenizer_config.json", missing_ok=True)
    pad = tok_cfg.get("pad_token", EOS)
    pad = pad.get("content", EOS) if isinstance(pad, dict) else pad
    width = tc.get("hidden_size", 512)
    spec = {
        "preprocessor": {"type": "clip-bpe", "vocab": str((tok / "vocab.json").resolve()),
                         "merges": str((tok / "merges.txt").resolve()),
                         "context_length": min(int(tok_cfg.get("model_max_length", 77)),
                                               tc.get("max_position_embeddings", 77)),
                         "pad_token": pad},
        "tokenizer": {"type": "token-embedding", "vocab_size": tc.get("vocab_size", 49408),
                      "width": width, "context_length": tc.get("max_position_embeddings", 77)},
        "encoder": {"type": "text-transformer", "layers": tc.get("num_hidden_layers", 12),
                    "heads": tc.get("num_attention_heads", 8),
                    "act": hf.activation(tc.get("hidden_act", "quick_gelu")),
                    "norm_eps": tc.get("layer_norm_eps", 1e-5),
                    "mlp_ratio": tc.get("intermediate_size", 2048) / width,
                    "causal": True, "final_norm": True}}
    state = hf.read_weights(folder / "text_encoder")
    if not any(k.startswith("text_model.") for k in state):
        state = {f"text_model.{k}": v for k, v in state.items()}
    mapped = HF_TO_MMCORE.apply(state, source=str(folder / "text_encoder"))
    return spec, {k: v for k, v in mapped.items() if k.startswith(("tokenizers.text.",
                                                                    "encoders.text."))}


class DiffusersSDConverter:
    """Reads and writes diffusers Stable Diffusion folders (export:
    :mod:`mmcore_diffusion.export`)."""

    def detect(self, source: Path) -> bool:
        return source.is_dir() and all((source / p).is_dir() for p in ("unet", "vae")) and \
            (source / "unet" / hf.CONFIG).is_file()

    def to_mmcore(self, source: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
        missing = [p for p in PARTS if not (source / p).is_dir()]
        if missing:
            raise CheckpointError(f"{source}: a diffusers Stable Diffusion folder needs "
                                  f"{', '.join(missing)}/")
        scheduler = hf.read_json_object(source / "scheduler" / SCHEDULER_CONFIG)
        sampler_from_config(scheduler, where=str(source / "scheduler" / SCHEDULER_CONFIG))
        ucfg = unet_config(hf.read_config(source / "unet"), str(source / "unet" / hf.CONFIG))
        vcfg = vae_config(hf.read_config(source / "vae"), str(source / "vae" / hf.CONFIG))
        raw_unet = hf.read_config(source / "unet")
        side = int(raw_unet.get("sample_size", 64))
        kernels = select_kernels()
        with torch.device("meta"):
            unet, vae = UNet2DCondition(ucfg, kernels=kernels), AutoencoderKL(vcfg, kernels=kernels)
        tensors = _mapped(unet, read_component_weights(source / "unet"), unet_key_map(),
                          "fusion.network.", str(source / "unet"))
        tensors |= _mapped(vae, read_component_weights(source / "vae"), vae_key_map(),
                           "tokenizers.image.codec.", str(source / "vae"))
        text, text_tensors = _text_modality(source)
        tensors |= text_tensors
        fusion = {"type": "unet", **asdict(ucfg), "sample_size": side,
                  "null_condition": "empty-prompt", "scheduler": scheduler}
        size = side * vcfg.downsampling
        spec = {"name": source.name or "stable-diffusion",
                "description": f"imported from the diffusers folder {source}",
                "modalities": {
                    "image": {"preprocessor": {"type": "image", "size": size,
                                               "mean": [0.5] * 3, "std": [0.5] * 3},
                              "tokenizer": {"type": "latent", "image_size": size,
                                            "codec": {"type": "kl-autoencoder",
                                                      **asdict(vcfg)}}},
                    "text": text},
                "fusion": fusion}
        return spec, tensors

    def from_mmcore(self, model: Any, out: Path) -> None:
        """Write ``model`` as a diffusers folder
        (:func:`mmcore_diffusion.export.export_diffusers_sd`)."""
        from mmcore_diffusion.export import export_diffusers_sd

        export_diffusers_sd(model, Path(out))


def make_converter() -> DiffusersSDConverter:
    return DiffusersSDConverter()
